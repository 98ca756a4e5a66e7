//! The `llm` module over the bridge: whole answers, streamed answers, `Promise.all`
//! over parallel generations, the executor's worker and queue bounds, timeouts, service errors,
//! stopping from `onChunk`, and cancellation when the NPC is despawned mid-stream (the service
//! observes it).

mod common;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use bevy_lua_coroutines::{
    AsyncExecutor, LlmFuture, LlmMessage, LlmRequest, LlmRole, LlmService, StreamSender,
};
use common::*;

/// What the test service saw.
#[derive(Clone, Default)]
struct Seen {
    started: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// Generations whose future was dropped before it finished (cancelled).
    dropped: Arc<AtomicUsize>,
    /// Generations that saw `send` fail (the script stopped listening).
    send_failed: Arc<AtomicBool>,
    /// The prompts, in the order their generations started.
    prompts: Arc<Mutex<Vec<String>>>,
    /// The whole requests, in the same order.
    requests: Arc<Mutex<Vec<LlmRequest>>>,
}

/// Counts in-flight generations; notes a drop before the end.
struct Flight {
    seen: Seen,
    finished: bool,
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.seen.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.seen.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Answers `"<prompt>:1 <prompt>:2 ..."` (`maxTokens` tokens, endless for `"forever"`), fails
/// for `"fail"`, never answers `"hang"`, panics for `"panic"`; a prompt ending in `!` waits until
/// three generations are in flight before its first token. Yields between tokens so generations
/// interleave. Once `send` fails it waits to be dropped, so every stopped generation is dropped.
struct TestLlm(Seen);

impl LlmService for TestLlm {
    fn generate<'a>(&'a self, request: LlmRequest, tokens: &'a mut StreamSender) -> LlmFuture<'a> {
        let seen = self.0.clone();
        Box::pin(async move {
            seen.started.fetch_add(1, Ordering::SeqCst);
            seen.prompts.lock().unwrap().push(request.prompt.clone());
            seen.requests.lock().unwrap().push(request.clone());
            let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut flight = Flight { seen: seen.clone(), finished: false };
            match request.prompt.as_str() {
                "fail" => {
                    flight.finished = true;
                    return Err("the model is overloaded".into());
                }
                "hang" => std::future::pending::<()>().await,
                "panic" => {
                    let _ = tokens.send("partial").await;
                    panic!("the model client crashed");
                }
                p if p.ends_with('!') => {
                    while seen.in_flight.load(Ordering::SeqCst) < 3 {
                        bevy::tasks::futures_lite::future::yield_now().await;
                    }
                }
                _ => {}
            }
            let n = if request.prompt == "forever" { u32::MAX } else { request.max_tokens.unwrap_or(3) };
            for i in 1..=n {
                bevy::tasks::futures_lite::future::yield_now().await;
                let token =
                    if i == 1 { format!("{}:1", request.prompt) } else { format!(" {}:{i}", request.prompt) };
                if tokens.send(token).await.is_err() {
                    seen.send_failed.store(true, Ordering::SeqCst);
                    std::future::pending::<()>().await; // until the owner drops this future
                }
            }
            flight.finished = true;
            Ok(())
        })
    }
}

fn llm_app(config: LlmConfig) -> (App, Seen) {
    let seen = Seen::default();
    let mut app = create_app();
    app.add_llm_service(TestLlm(seen.clone()), config);
    (app, seen)
}

fn ok_output(app: &mut App, src: &str, lines: usize) -> Vec<String> {
    spawn_script(app, "scripts/npc.lua", src);
    run_until_printed(app, lines);
    let errs = errors(app);
    assert!(errs.is_empty(), "unexpected script errors: {errs:#?}");
    printed(app)
}

/// Updates until `done`, sleeping a little per frame so pool threads catch up (bounded).
fn run_until_seen(app: &mut App, done: impl Fn() -> bool) {
    run_until(app, 5000, |_| {
        std::thread::sleep(Duration::from_micros(200));
        done()
    });
}

#[test]
fn generate_async_resolves_with_the_whole_answer() {
    let (mut app, _) = llm_app(LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        print(await(llm.generateAsync("hello")))
        print(await(llm.generateAsync("hi", { maxTokens = 5, temperature = 0.2 })))
        "#,
        2,
    );
    assert_eq!(out, ["hello:1 hello:2 hello:3", "hi:1 hi:2 hi:3 hi:4 hi:5"]);
}

#[test]
fn llm_bridge_is_the_seed_name_of_llm() {
    assert_eq!(output("print(llm, llmBridge)", 1), ["nil\tnil"], "neither exists without a service");
    let (mut app, _) = llm_app(LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        print(rawequal(llmBridge, llm))
        print(await(llmBridge.generateAsync("hello")))
        print(await(llmBridge.streamGenerate("hi", function() end, { maxTokens = 2 })))
        "#,
        3,
    );
    assert_eq!(out, ["true", "hello:1 hello:2 hello:3", "hi:1 hi:2"]);
}

#[test]
fn stream_generate_delivers_tokens_and_resolves_with_the_text() {
    let (mut app, _) = llm_app(LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        local chunks = {}
        local text = await(llm.streamGenerate("q", function(chunk) chunks[#chunks + 1] = chunk end, { maxTokens = 4 }))
        print(#chunks, chunks[1], chunks[4])
        print(text)
        "#,
        2,
    );
    assert_eq!(out, ["4\tq:1\t q:4", "q:1 q:2 q:3 q:4"]);
}

#[test]
fn promise_all_runs_generations_in_parallel() {
    let (mut app, seen) = llm_app(LlmConfig { workers: 3, ..default() });
    let out = ok_output(
        &mut app,
        r#"
        local answers = await(Promise.all({
            llm.generateAsync("a!"),
            llm.generateAsync("b!", { maxTokens = 2 }),
            llm.generateAsync("c!", { maxTokens = 1 }),
        }))
        print(answers[1], answers[2], answers[3])
        "#,
        1,
    );
    // Each generation waits for all three to be in flight: they only finish if they run at once.
    assert_eq!(out, ["a!:1 a!:2 a!:3\tb!:1 b!:2\tc!:1"]);
    assert_eq!(seen.started.load(Ordering::SeqCst), 3);
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 3, "the generations did not run in parallel");
}

#[test]
fn a_full_queue_makes_the_script_wait_not_the_frame() {
    let (mut app, seen) = llm_app(LlmConfig { workers: 2, queue: 1, buffer: 2 });
    spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"
        local f0 = time.frame()
        local hangs = { llm.generateAsync("hang"), llm.generateAsync("hang") } -- both workers
        local ps = {}
        for i = 1, 6 do ps[i] = llm.generateAsync("p" .. i, { maxTokens = 2 }) end
        print("asked within", time.frame() - f0, "frames")
        task.wait(0.1)
        print("went on for", time.frame() - f0, "frames")
        task.wait()
        hangs[1]:cancel()
        hangs[2]:cancel()
        local all = await(Promise.all(ps))
        print(#all, all[6])
        "#,
    );
    let mut filled = None;
    for _ in 0..5000 {
        app.update();
        let executor = app.world().resource::<AsyncExecutor>();
        assert!(executor.running() <= 2 && executor.submitted() <= 3);
        if printed(&app).len() == 2 && filled.is_none() {
            // The two that never answer hold the workers until the script cancels them, a frame later.
            filled = Some(executor.submitted());
        }
        if printed(&app).len() >= 3 || !errors(&app).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    // The calls returned their promises at once, and frames went on while they waited.
    assert_eq!(printed(&app), ["asked within\t0\tframes", "went on for\t6\tframes", "6\tp6:1 p6:2"]);
    assert_eq!(filled, Some(3), "the executor's workers and queue were not full while the script waited");
    // The two that never answer may be cancelled before a pool thread ever polled them.
    let answered: Vec<String> =
        seen.prompts.lock().unwrap().iter().filter(|p| *p != "hang").cloned().collect();
    assert_eq!(answered, ["p1", "p2", "p3", "p4", "p5", "p6"], "the waiting calls started out of order");
    assert!(seen.max_in_flight.load(Ordering::SeqCst) <= 2);
}

#[test]
fn service_errors_reject_and_reach_on_chunk() {
    let (mut app, _) = llm_app(LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        print(pcall(await, llm.generateAsync("fail")))
        local got
        local status, err = llm.streamGenerate("fail", function(chunk, e) got = { chunk, e } end):awaitStatus()
        print(status, err, got[1], got[2])
        "#,
        2,
    );
    assert_eq!(
        out,
        ["false\tthe model is overloaded", "Rejected\tthe model is overloaded\tnil\tthe model is overloaded"]
    );
}

#[test]
fn a_timeout_rejects_and_cancels_the_work() {
    let (mut app, seen) = llm_app(LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        local ok, err = pcall(await, llm.generateAsync("hang", { timeout = 0.25 }))
        print(ok, Promise.Error.isKind(err, Promise.Error.Kind.TimedOut), time.frame())
        local s, e = llm.streamGenerate("hang", function() end, { timeout = 0.1 }):awaitStatus()
        print(s, Promise.Error.isKind(e, Promise.Error.Kind.TimedOut))
        "#,
        2,
    );
    assert_eq!(out[0], "false\ttrue\t16"); // 0.25 s of game time: frame 16 at 1/60 s
    assert_eq!(out[1], "Rejected\ttrue");
    // Every generation that started is dropped, and none is left in flight. (One the async pool
    // had not started when its timeout cancelled it never runs at all: with the other tests of
    // this binary keeping the pool busy, sometimes neither had started within its 0.25 s or
    // 0.1 s of game time, and a wait for two drops failed, about one run in twenty.)
    run_until_seen(&mut app, || {
        let (started, dropped) = (seen.started.load(Ordering::SeqCst), seen.dropped.load(Ordering::SeqCst));
        seen.in_flight.load(Ordering::SeqCst) == 0 && dropped == started
    });
}

#[test]
fn returning_false_from_on_chunk_stops_the_generation_in_rust() {
    let (mut app, seen) = llm_app(LlmConfig { buffer: 2, ..default() });
    let out = ok_output(
        &mut app,
        r#"
        local n = 0
        local text = await(llm.streamGenerate("forever", function(chunk)
            n = n + 1
            return n < 5
        end))
        print(n, text)
        "#,
        1,
    );
    assert_eq!(out, ["5\tforever:1 forever:2 forever:3 forever:4 forever:5"]);
    run_until_seen(&mut app, || seen.in_flight.load(Ordering::SeqCst) == 0);
    assert_eq!(seen.dropped.load(Ordering::SeqCst), 1, "the generation's future was not dropped");
}

#[test]
fn despawning_the_npc_mid_stream_cancels_the_generation() {
    let (mut app, seen) = llm_app(LlmConfig { buffer: 2, ..default() });
    let npc = spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"
        llm.streamGenerate("forever", function(chunk) print(chunk) end)
        "#,
    );
    run_until(&mut app, 5000, |app| {
        std::thread::sleep(Duration::from_micros(200));
        printed(app).len() >= 5
    });
    assert_eq!(seen.in_flight.load(Ordering::SeqCst), 1);
    app.world_mut().despawn(npc);
    run_until_seen(&mut app, || seen.in_flight.load(Ordering::SeqCst) == 0);
    assert_eq!(seen.dropped.load(Ordering::SeqCst), 1, "the generation's future was not dropped");
    let executor = app.world().resource::<AsyncExecutor>().clone();
    run_until_seen(&mut app, || executor.submitted() == 0);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
}

#[test]
fn arguments_are_checked() {
    let (mut app, _) = llm_app(LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        local unpack = unpack or table.unpack
        local function try(f, ...)
            local n, args = select('#', ...), { ... }
            print((select(2, pcall(function() f(unpack(args, 1, n)) end))))
        end
        try(llm.generateAsync, 5)
        try(llm.generateAsync, "x", 3)
        try(llm.generateAsync, "x", { maxTokens = "many" })
        try(llm.generateAsync, "x", { temprature = 1 })
        try(llm.generateAsync, "x", { timeout = -1 })
        try(llm.streamGenerate, "x", nil)
        try(llm.streamGenerate, "x", print, { maxTokens = -2 })
        try(llm.generateAsync, "\xff\xfe")
        try(llm.streamGenerate, 5, nil)
        try(llm.generateAsync, "x", { system = 5 })
        try(llm.generateAsync, "x", { messages = { { role = "narrator", content = "x" } } })
        try(llm.generateAsync, "x", { messages = { { role = "user" } } })
        "#,
        12,
    );
    let expected = [
        "bad argument #1 to 'generateAsync' (string expected, got number)",
        "bad argument #2 to 'generateAsync' (table expected, got number)",
        "bad argument #2 to 'generateAsync' (at maxTokens: invalid type: string \"many\", expected u32)",
        "bad argument #2 to 'generateAsync' (at temprature: unknown field `temprature`",
        "bad argument #2 to 'generateAsync' (field 'timeout': positive number expected, got -1)",
        "bad argument #2 to 'streamGenerate' (function expected, got nil)",
        "bad argument #3 to 'streamGenerate' (at maxTokens:",
        "bad argument #1 to 'generateAsync' (prompt is not UTF-8)",
        "bad argument #1 to 'streamGenerate' (string expected, got number)",
        "bad argument #2 to 'generateAsync' (at system: invalid type: integer `5`, expected a string",
        "bad argument #2 to 'generateAsync' (at messages[0].role: unknown variant `narrator`",
        "bad argument #2 to 'generateAsync' (at messages[0]: missing field `content`",
    ];
    assert_eq!(out.len(), expected.len(), "{out:?}");
    for (line, want) in out.iter().zip(expected) {
        assert!(line.contains(want), "{line:?} should contain {want:?}");
        assert!(line.starts_with("scripts/npc.lua:"), "{line:?} should name the script's line");
        assert!(!line.contains("traceback"), "{line:?} should be one line");
    }
}

#[test]
fn system_and_messages_reach_the_service() {
    let (mut app, seen) = llm_app(LlmConfig::default());
    ok_output(
        &mut app,
        r#"
        await(llm.generateAsync("And the pass?", {
            system = "You are a guide.",
            messages = { { role = "user", content = "Hi." }, { role = "assistant", content = "Hello." } },
        }))
        await(llm.streamGenerate("Plain.", function() end, { messages = {} }))
        print("done")
        "#,
        1,
    );
    let requests = seen.requests.lock().unwrap().clone();
    let message = |role, content: &str| LlmMessage { role, content: content.into() };
    assert_eq!(
        requests,
        [
            LlmRequest {
                prompt: "And the pass?".into(),
                system: Some("You are a guide.".into()),
                messages: vec![message(LlmRole::User, "Hi."), message(LlmRole::Assistant, "Hello.")],
                ..default()
            },
            LlmRequest { prompt: "Plain.".into(), ..default() },
        ]
    );
}

#[test]
fn the_local_model_answers_a_conversation_deterministically() {
    let model = LocalLlm::new(Duration::ZERO);
    let plain = LlmRequest { prompt: "What now?".into(), max_tokens: Some(8), ..default() };
    let talk = |system: Option<&str>, said: &str| LlmRequest {
        system: system.map(String::from),
        messages: vec![LlmMessage { role: LlmRole::User, content: said.into() }],
        ..plain.clone()
    };
    let answer = |r: &LlmRequest| model.tokens(r).collect::<String>();
    assert_eq!(answer(&talk(None, "The mill.")), answer(&talk(None, "The mill.")), "same conversation");
    assert_ne!(answer(&talk(None, "The mill.")), answer(&plain), "the conversation moves the answer");
    assert_ne!(answer(&talk(None, "The mill.")), answer(&talk(None, "The ford.")));
    assert_ne!(answer(&talk(Some("Be brief."), "The mill.")), answer(&talk(None, "The mill.")));
}

#[test]
fn the_local_model_is_deterministic() {
    let model = LocalLlm::new(Duration::ZERO);
    let request = LlmRequest {
        prompt: "Where is the smith?".into(),
        temperature: Some(0.7),
        max_tokens: Some(6),
        ..default()
    };
    let tokens: Vec<String> = model.tokens(&request).collect();
    assert_eq!(tokens.len(), 6);
    assert_eq!(tokens, model.tokens(&request).collect::<Vec<_>>());
    assert!(!tokens[0].starts_with(' ') && tokens[1].starts_with(' '));

    let mut app = create_app();
    app.add_llm_service(LocalLlm::new(Duration::from_millis(1)), LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        local a = await(llm.generateAsync("Where is the smith?", { temperature = 0.7, maxTokens = 6 }))
        local parts = {}
        local b = await(llm.streamGenerate("Where is the smith?", function(t) parts[#parts + 1] = t end,
            { temperature = 0.7, maxTokens = 6 }))
        print(a == b, a == table.concat(parts), a)
        print(pcall(await, llm.generateAsync("   ")))
        "#,
        2,
    );
    assert_eq!(out[0], format!("true\ttrue\t{}", tokens.concat()));
    assert_eq!(out[1], "false\tempty prompt");
}

#[test]
fn a_panicking_service_rejects_with_the_panic() {
    let (mut app, _) = llm_app(LlmConfig::default());
    let out = ok_output(
        &mut app,
        r#"
        print(llm.generateAsync("panic"):awaitStatus())
        local got = {}
        print(llm.streamGenerate("panic", function(c, e) got[#got + 1] = tostring(c) .. "/" .. tostring(e) end):awaitStatus())
        print(table.concat(got, " "))
        "#,
        3,
    );
    let message = "the language-model service panicked: the model client crashed";
    assert_eq!(out[0], format!("Rejected\t{message}"), "a panic read as a complete answer");
    assert_eq!(out[1], format!("Rejected\t{message}"));
    assert_eq!(out[2], format!("partial/nil nil/{message}"));
}

#[test]
fn timeout_and_cancel_cover_the_wait_for_a_full_queue() {
    let (mut app, seen) = llm_app(LlmConfig { workers: 1, queue: 0, buffer: 4 });
    let out = ok_output(
        &mut app,
        r#"
        local busy = llm.generateAsync("hang")
        local f0 = time.frame()
        local late = llm.generateAsync("late", { timeout = 0.1 })
        local dropped = llm.streamGenerate("dropped", print)
        print("asked within", time.frame() - f0, "frames")
        local status, err = late:awaitStatus()
        print(status, Promise.Error.isKind(err, Promise.Error.Kind.TimedOut), time.frame() - f0)
        dropped:cancel()
        busy:cancel()
        print(await(llm.generateAsync("next", { maxTokens = 1 })))
        "#,
        3,
    );
    assert_eq!(out, ["asked within\t0\tframes", "Rejected\ttrue\t6", "next:1"]);
    assert_eq!(
        *seen.prompts.lock().unwrap(),
        ["hang", "next"],
        "a call that timed out or was cancelled while queued still ran"
    );
}

#[test]
fn calls_waiting_for_a_full_queue_start_first_come_first_served() {
    let (mut app, seen) = llm_app(LlmConfig { workers: 1, queue: 0, buffer: 4 });
    let first = spawn_script(&mut app, "scripts/first.lua", r#"llm.generateAsync("hang") task.wait(1000)"#);
    // The worker thread may start the generation frames later on a loaded machine: wait for it, or
    // the despawn below can drop it before the service ever sees it.
    run_until(&mut app, 5000, |_| {
        std::thread::sleep(Duration::from_micros(200));
        !seen.prompts.lock().unwrap().is_empty()
    });
    spawn_script(&mut app, "scripts/a.lua", r#"print(await(llm.generateAsync("a", { maxTokens = 1 })))"#);
    run(&mut app, 2);
    spawn_script(&mut app, "scripts/b.lua", r#"print(await(llm.generateAsync("b", { maxTokens = 1 })))"#);
    run(&mut app, 2);
    // Free the worker (the despawn drops the generation that held it), and ask once more at once:
    // the new call goes behind the two waiting ones although a place is free when it asks.
    app.world_mut().despawn(first);
    spawn_script(&mut app, "scripts/c.lua", r#"print(await(llm.generateAsync("c", { maxTokens = 1 })))"#);
    run_until(&mut app, 5000, |app| {
        std::thread::sleep(Duration::from_micros(200));
        printed(app).len() == 3
    });
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    assert_eq!(*seen.prompts.lock().unwrap(), ["hang", "a", "b", "c"], "queued calls started out of order");
}

#[test]
fn an_unbounded_queue_does_not_overflow() {
    let executor = AsyncExecutor::new(4, usize::MAX);
    let full = std::panic::catch_unwind(|| executor.is_full());
    assert!(matches!(full, Ok(false)), "is_full with queue = usize::MAX: {full:?}");
}

#[test]
fn the_local_model_makes_tokens_as_they_are_taken() {
    let model = LocalLlm::new(Duration::ZERO);
    let request = LlmRequest { prompt: "x".into(), max_tokens: Some(u32::MAX), ..default() };
    // Built up front, u32::MAX tokens would not fit in memory.
    assert_eq!(model.tokens(&request).take(3).count(), 3);
}
