//! Streams: every method over tables, iterators, channels and Rust producers;
//! laziness; backpressure; stopping early cancels the producer; producer errors; flat memory over a
//! 100 MB stream; `readFileStream` with the seed's word and line count.

mod common;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bevy::prelude::*;
use bevy::tasks::AsyncComputeTaskPool;
use bevy_lua_coroutines::Error;
use bevy_lua_coroutines::prelude::*;
use common::*;

/// Runs frames until the scripts printed `lines` lines, and checks they raised nothing.
fn run_until_printed_ok(app: &mut App, lines: usize) {
    run_until_printed(app, lines);
    let errs = errors(app);
    assert!(errs.is_empty(), "unexpected script errors: {errs:#?}");
}

fn script_output(app: &mut App, src: &str, lines: usize) -> Vec<String> {
    spawn_script(app, "scripts/test.lua", src);
    run_until_printed_ok(app, lines);
    printed(app)
}

#[test]
fn read_over_a_table_an_iterator_and_a_channel() {
    let out = output(
        r#"
        local s = Stream.from({ "a", "b", "c" })
        print(s:read(), s:read(), s:read(), s:read(), s:read())
        local i = 0
        local it = Stream.from(function() i = i + 1; if i <= 3 then return i * 10 end end)
        print(it:read(), it:read(), it:read(), it:read())
        local ch = Channel.new(1)
        spawn(function()
            for k = 1, 3 do ch:send("x" .. k); task.wait() end
            ch:close()
        end)
        local cs = Stream.from(ch)
        local got = {}
        while true do
            local v = cs:read()
            if v == nil then break end
            got[#got + 1] = v
        end
        print(table.concat(got, ","), time.frame())
        print(tostring(cs):match("^Stream%(channel%)") ~= nil, Stream.from(cs) == cs)
        "#,
        10,
    );
    assert_eq!(out, ["a\tb\tc\tnil\tnil", "10\t20\t30\tnil", "x1,x2,x3\t4", "true\ttrue"]);
}

#[test]
fn iter_for_each_reduce_and_collect() {
    let out = output(
        r#"
        for v in Stream.from({ 1, 2, 3 }):iter() do print("iter", v) end
        local seen = {}
        local p = Stream.from({ "x", "y" }):forEach(function(v) task.wait(); seen[#seen + 1] = v end)
        print(await(p), table.concat(seen))
        print(await(Stream.from({ 1, 2, 3, 4 }):reduce(function(acc, v) return acc + v end, 100)))
        print(table.concat(await(Stream.from({ "p", "q" }):collect()), "+"))
        "#,
        10,
    );
    assert_eq!(out, ["iter\t1", "iter\t2", "iter\t3", "nil\txy", "110", "p+q"]);
}

#[test]
fn iter_runs_a_long_loop_within_one_resume() {
    // Luau nests one C call per successful `pcall` of a Lua function made inside a generic `for`'s
    // iterator until the thread yields: 1000 chunks through two stages would overflow its C stack.
    let out = output(
        r#"
        local t = {}
        for i = 1, 1000 do t[i] = i end
        local n, sum = 0, 0
        local s = Stream.from(t):map(function(x) return x * 2 end):filter(function(x) return x % 4 == 0 end)
        for v in s:iter() do n, sum = n + 1, sum + v end
        print(n, sum)
        local calls = 0
        local failing = Stream.from(function()
            calls = calls + 1
            if calls == 2 then error("boom", 0) end
            return calls
        end)
        print(pcall(function() for _ in failing:iter() do end end))
        print(failing:read(), calls)
        "#,
        2,
    );
    assert_eq!(out, ["500\t501000", "false\tboom", "nil\t2"]);
}

#[test]
fn map_filter_and_take_are_lazy() {
    let out = output(
        r#"
        local calls = 0
        local function numbers()
            calls = calls + 1
            return calls
        end
        local s = Stream.from(numbers)
            :map(function(v) return v * 2 end)
            :filter(function(v) return v % 3 ~= 0 end)
            :take(3)
        print("before", calls)
        print(table.concat(await(s:collect()), ","), "pulled", calls)
        print(s:read(), calls)
        local skipped = Stream.from({ 1, 2, 3 }):map(function(v) if v ~= 2 then return v end end)
        print(table.concat(await(skipped:collect()), ","))
        print(#await(Stream.from({ 1, 2 }):take(0):collect()))
        "#,
        10,
    );
    // 2, 4, (6 filtered), 8: the source was called four times, never more.
    assert_eq!(out, ["before\t0", "2,4,8\tpulled\t4", "nil\t4", "1,3", "0"]);
}

#[test]
fn read_line_joins_chunks_and_strips_line_ends() {
    let out = output(
        r#"
        local s = Stream.from({ "one\r", "\ntw", "o\n\nthr", "ee\r\nlast" })
        while true do
            local line = s:readLine()
            if line == nil then break end
            print("[" .. line .. "]")
        end
        print(s:readLine())
        local t = Stream.from({ "ends with newline\n" })
        print(t:readLine(), select('#', t:readLine()))
        "#,
        5,
    );
    // A clean end is one `nil`, with no error after it.
    assert_eq!(out, ["[one]", "[two]", "[]", "[three]", "[last]", "nil", "ends with newline\t1"]);
}

#[test]
fn a_failing_producer_ends_read_with_the_error_and_rejects_promises() {
    let out = output(
        r#"
        local n = 0
        local function failing()
            n = n + 1
            if n == 3 then error("disk on fire", 0) end
            return n
        end
        local s = Stream.from(failing)
        print(s:read(), s:read())
        print(s:read())
        print(s:read())
        n = 0
        local ok, err = pcall(await, Stream.from(failing):collect())
        print(ok, err)
        n = 0
        print(pcall(function() for _ in Stream.from(failing):iter() do end end))
        n = 0
        print(Stream.from(failing):forEach(function() end):awaitStatus())
        n = 0
        local r = Stream.from(failing)
        print(r:readLine())
        print(r:readLine())
        "#,
        5,
    );
    assert_eq!(
        out,
        [
            "1\t2",
            "nil\tdisk on fire",
            "nil\tdisk on fire",
            "false\tdisk on fire",
            "false\tdisk on fire",
            "Rejected\tdisk on fire",
            "12",
            "nil\tdisk on fire",
        ]
    );
}

#[test]
fn arguments_are_checked() {
    let out = output(
        r#"
        local function try(f, ...) print((select(2, pcall(f, ...)))) end
        try(Stream.from, 5)
        local s = Stream.from({})
        try(s.map, s, 1)
        try(s.filter, s, nil)
        try(s.take, s, "x")
        try(s.take, s, -1)
        try(s.reduce, s, {})
        try(s.forEach, s)
        try(s.read, {})
        try(function() s.x = 1 end)
        "#,
        2,
    );
    let expected = [
        "bad argument #1 to 'from' (Channel, table or function expected, got number)",
        "bad argument #1 to 'map' (function expected, got number)",
        "bad argument #1 to 'filter' (function expected, got nil)",
        "bad argument #1 to 'take' (number expected, got string)",
        "bad argument #1 to 'take' (non-negative integer expected, got -1)",
        "bad argument #1 to 'reduce' (function expected, got table)",
        "bad argument #1 to 'forEach' (function expected, got nil)",
        "calling 'read' on bad self (Stream expected, got table)",
        "attempt to modify a Stream (field 'x')",
    ];
    assert_eq!(out.len(), expected.len(), "{out:?}");
    for (line, want) in out.iter().zip(expected) {
        assert!(line.ends_with(want), "{line:?} should end with {want:?}");
    }
}

/// What a Rust producer observed.
#[derive(Clone, Default)]
struct Probe {
    sent: Arc<AtomicUsize>,
    max_ahead: Arc<AtomicUsize>,
    read: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

const CAPACITY: usize = 4;

/// `numbers(n)`: a stream of 1..=n (endless for 0) from a future on the pool, recording how far
/// ahead of the script it got and whether it was stopped.
fn numbers_app(probe: &Probe) -> App {
    let mut app = create_app();
    let p = probe.clone();
    app.add_lua_stream_function("numbers", CAPACITY, move |n: usize, mut tx: StreamSender| {
        let p = p.clone();
        AsyncComputeTaskPool::get()
            .spawn(async move {
                let mut i = 0;
                while n == 0 || i < n {
                    i += 1;
                    if tx.send(i).await.is_err() {
                        p.stopped.store(true, Ordering::SeqCst);
                        return;
                    }
                    p.sent.store(i, Ordering::SeqCst);
                    let ahead = i.saturating_sub(p.read.load(Ordering::SeqCst));
                    p.max_ahead.fetch_max(ahead, Ordering::SeqCst);
                }
                if n == 7 {
                    tx.fail("out of numbers");
                }
            })
            .detach();
        Ok::<_, String>(())
    });
    let p = probe.clone();
    app.add_lua_function("consumed", move |i: usize| {
        p.read.store(i, Ordering::SeqCst);
        Ok::<_, String>(())
    });
    app
}

#[test]
fn rust_producer_every_method() {
    let probe = Probe::default();
    let mut app = numbers_app(&probe);
    let out = script_output(
        &mut app,
        r#"
        local s = numbers(5)
        print(s:read(), s:read())
        print(table.concat(await(s:collect()), ","))
        print(await(numbers(4):map(function(v) return v * v end):filter(function(v) return v > 1 end)
            :reduce(function(a, v) return a + v end, 0)))
        local sum = 0
        await(numbers(3):forEach(function(v) sum = sum + v end))
        print(sum)
        for v in numbers(2):iter() do print("iter", v) end
        local lines = numbers(3):map(function(v) return v .. "\n" end)
        print(lines:readLine(), lines:readLine(), lines:readLine(), lines:readLine())
        print(numbers(7):reduce(function(a, v) return a + v end, 0):awaitStatus())
        local f = numbers(7)
        for _ = 1, 7 do f:read() end
        print(f:read())
        print(pcall(numbers, "x"))
        "#,
        10,
    );
    assert_eq!(
        out,
        [
            "1\t2",
            "3,4,5",
            "29",
            "6",
            "iter\t1",
            "iter\t2",
            "1\t2\t3\tnil",
            "Rejected\tout of numbers",
            "nil\tout of numbers",
            "false\tbad argument #1 to 'numbers' (invalid type: string \"x\", expected usize)",
        ]
    );
}

#[test]
fn a_producer_is_never_more_than_the_buffer_ahead() {
    let probe = Probe::default();
    let mut app = numbers_app(&probe);
    spawn_script(
        &mut app,
        "scripts/slow.lua",
        r#"
        local s = numbers(60)
        for v in s:iter() do
            consumed(v)
            task.wait(0.05) -- a slow consumer: three frames per chunk
        end
        print("done")
        "#,
    );
    run_until_printed_ok(&mut app, 1);
    assert_eq!(probe.sent.load(Ordering::SeqCst), 60);
    let ahead = probe.max_ahead.load(Ordering::SeqCst);
    // The chunk being read was taken out of the buffer before `consumed` saw it: one more.
    assert!(ahead <= CAPACITY + 1, "the producer got {ahead} chunks ahead with a buffer of {CAPACITY}");
    assert!(ahead >= CAPACITY, "the producer never filled the buffer ({ahead})");
}

#[test]
fn stopping_early_cancels_the_producer() {
    for src in [
        "print(table.concat(await(numbers(0):take(3):collect()), ','))",
        "local s = numbers(0); print(s:read(), s:read()); s:close(); print(s:read())",
        "local s = numbers(0); local p = s:forEach(function() end); task.wait(); p:cancel(); print('cancelled')",
    ] {
        let probe = Probe::default();
        let mut app = numbers_app(&probe);
        spawn_script(&mut app, "scripts/stop.lua", src);
        run_until(&mut app, 5000, |_| {
            std::thread::sleep(Duration::from_micros(200));
            probe.stopped.load(Ordering::SeqCst)
        });
        assert!(errors(&app).is_empty(), "{:?}", errors(&app));
        assert!(!printed(&app).is_empty());
    }
}

#[test]
fn a_stream_dropped_without_closing_stops_its_producer() {
    let probe = Probe::default();
    let mut app = numbers_app(&probe);
    spawn_script(
        &mut app,
        "scripts/drop.lua",
        "do local s = numbers(0); print(s:read()) end collectgarbage() collectgarbage()",
    );
    run_until(&mut app, 5000, |_| {
        std::thread::sleep(Duration::from_micros(200));
        probe.stopped.load(Ordering::SeqCst)
    });
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    assert_eq!(printed(&app), ["1"]);
}

#[test]
fn despawning_the_reader_cancels_the_producer() {
    let probe = Probe::default();
    let mut app = numbers_app(&probe);
    let e = spawn_script(&mut app, "scripts/reader.lua", "for v in numbers(0):iter() do consumed(v) end");
    run_until(&mut app, 5000, |_| {
        std::thread::sleep(Duration::from_micros(200));
        probe.read.load(Ordering::SeqCst) >= 10
    });
    assert!(!probe.stopped.load(Ordering::SeqCst));
    app.world_mut().despawn(e);
    run_until(&mut app, 5000, |_| {
        std::thread::sleep(Duration::from_micros(200));
        probe.stopped.load(Ordering::SeqCst)
    });
}

#[test]
fn memory_stays_flat_over_a_100_mb_stream() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1600; // 100 MiB
    let mut app = create_app();
    app.add_lua_stream_function("bigStream", 8, |mut tx: StreamSender| {
        AsyncComputeTaskPool::get()
            .spawn(async move {
                for i in 0..CHUNKS {
                    if tx.send_bytes(vec![b'a' + (i % 26) as u8; CHUNK]).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
        Ok::<_, String>(())
    });
    spawn_script(
        &mut app,
        "scripts/big.lua",
        r#"
        local total, n = 0, 0
        for chunk in bigStream():iter() do
            total, n = total + #chunk, n + 1
        end
        print(total, n)
        "#,
    );
    app.update();
    let base = app.world().resource::<LuaRuntime>().used_memory();
    let mut peak = base;
    for _ in 0..20_000 {
        app.update();
        peak = peak.max(app.world().resource::<LuaRuntime>().used_memory());
        if !printed(&app).is_empty() || !errors(&app).is_empty() {
            break;
        }
        std::thread::yield_now();
    }
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    assert_eq!(printed(&app), [format!("{}\t{CHUNKS}", CHUNK * CHUNKS)]);
    let grew = peak.saturating_sub(base);
    assert!(grew < 16 * 1024 * 1024, "Lua memory grew by {} KiB while streaming 100 MiB", grew / 1024);
}

#[test]
fn read_file_stream_counts_words_and_lines() {
    let mut app = create_app();
    let out = script_output(
        &mut app,
        r#"
        local s = readFileStream("text/road.txt")
        local lines, words = 0, 0
        while true do
            local line = s:readLine()
            if line == nil then break end
            lines = lines + 1
            for _ in line:gmatch("%S+") do words = words + 1 end
        end
        print("lines", lines, "words", words)
        local size = await(readFileStream("text/road.txt"):reduce(function(n, chunk) return n + #chunk end, 0))
        print("bytes", size)
        print(readFileStream("text/missing.txt"):read())
        "#,
        3,
    );
    let size = std::fs::metadata(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/text/road.txt")).unwrap().len();
    assert_eq!(out[0], "lines\t9\twords\t51");
    assert_eq!(out[1], format!("bytes\t{size}"));
    assert!(out[2].starts_with("nil\tcannot open \"text/missing.txt\""), "{}", out[2]);
}

#[test]
fn read_file_stream_refuses_paths_outside_the_assets_folder() {
    let out = output(
        r#"
        print(select(2, pcall(readFileStream, "../Cargo.toml")))
        print(select(2, pcall(readFileStream, "/etc/passwd")))
        print(select(2, pcall(readFileStream, 3)))
        "#,
        2,
    );
    assert!(
        out[0]
            .contains("bad argument #1 to 'readFileStream' (path \"../Cargo.toml\" leaves the assets folder")
    );
    assert!(out[1].contains("bad argument #1 to 'readFileStream' (path \"/etc/passwd\" is absolute"));
    assert!(
        out[2].contains("bad argument #1 to 'readFileStream' (invalid type: integer `3`, expected a string)")
    );
}

/// Senders scripts asked for, waiting for the system that feeds them.
#[derive(Resource)]
struct NewSenders(crossbeam_channel::Receiver<StreamSender>);

/// The senders the system feeds, and what it saw.
#[derive(Resource, Default)]
struct Feeding {
    senders: Vec<(StreamSender, u32)>,
    full: usize,
    closed: usize,
}

/// A system feeds the streams: one `try_send` per frame each, a `Full` noted, the sender dropped
/// (ending the stream) after five chunks, or when the script stopped reading.
fn feed(new: Res<NewSenders>, mut feeding: ResMut<Feeding>) {
    let Feeding { senders, full, closed } = &mut *feeding;
    senders.extend(new.0.try_iter().map(|tx| (tx, 0)));
    senders.retain_mut(|(tx, sent)| {
        match tx.try_send(*sent + 1) {
            Ok(()) => *sent += 1,
            Err(Error::StreamFull) => *full += 1,
            Err(Error::StreamClosed) => {
                *closed += 1;
                return false;
            }
            Err(other) => panic!("try_send fails only with StreamFull or StreamClosed, not {other}"),
        }
        *sent < 5
    });
}

#[test]
fn a_system_feeds_a_stream_with_try_send() {
    let mut app = create_app();
    let (tx, rx) = crossbeam_channel::unbounded();
    app.add_lua_stream_function("fromSystem", 2, move |sender: StreamSender| {
        tx.send(sender).map_err(|e| e.to_string())
    })
    .insert_resource(NewSenders(rx))
    .init_resource::<Feeding>()
    .add_systems(Update, feed.before(LuaCoroutinesSystems::Sync));
    let out = script_output(
        &mut app,
        r#"
        local s = fromSystem()
        task.wait(0.1) -- let the buffer fill: the system's try_send reports Full meanwhile
        print(table.concat(await(s:collect()), ","))
        local early = fromSystem()
        print(early:read())
        early:close()
        task.wait(0.1)
        print("closed")
        "#,
        3,
    );
    assert_eq!(out, ["1,2,3,4,5", "1", "closed"]);
    let feeding = app.world().resource::<Feeding>();
    assert!(feeding.full > 0, "the buffer of 2 never filled");
    assert_eq!(feeding.closed, 1);
    assert!(feeding.senders.is_empty());
}

#[test]
fn no_chunk_is_handed_out_after_close() {
    let out = output(
        r#"
        local ch = Channel.new(10)
        local s = Stream.from(ch)
        local got = "pending"
        spawn(function() got = tostring(s:read()) end)
        ch:send("late")   -- handed to the waiting reader, which resumes later in the step
        s:close()         -- before it does
        task.wait()
        print(got)
        local t = Stream.from(Channel.new(10))
        local got2 = "pending"
        spawn(function() got2 = tostring(t:read()) end)
        t:close()
        task.wait()
        print(got2)
        "#,
        4,
    );
    assert_eq!(out, ["nil", "nil"], "a reader waiting in read() got a chunk after the stream was closed");
}

#[test]
fn take_one_hands_out_one_chunk_to_concurrent_readers() {
    let out = output(
        r#"
        local ch = Channel.new(10)
        local one = Stream.from(ch):take(1)
        local got = {}
        for k = 1, 2 do spawn(function() got[k] = tostring(one:read()) end) end
        ch:send("a"); ch:send("b")
        task.wait()
        print(got[1], got[2])
        "#,
        4,
    );
    assert_eq!(out, ["a\tnil"], "take(1) handed a chunk to each of two waiting readers");
}

#[test]
fn ending_a_channel_stream_early_closes_the_channel_and_stops_its_producer() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/test.lua",
        r#"
        local ch = Channel.new(1)
        spawn(function()
            for i = 1, 10 do
                if not pcall(ch.send, ch, i) then print("producer stopped", i) return end
            end
            print("producer ran to the end")
        end)
        print(table.concat(await(Stream.from(ch):take(2):collect()), ","))
        local other = Channel.new(1)
        local s = Stream.from(other)
        s:close()
        print(other:isClosed())
        "#,
    );
    run(&mut app, 10);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    let mut out = printed(&app);
    out.sort();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0], "1,2");
    assert!(
        out[1].starts_with("producer stopped"),
        "take left the channel open and its producer waiting in send: {out:?}"
    );
    assert_eq!(out[2], "true", "close() left the channel open");
}

#[test]
fn read_iter_and_for_each_after_read_line_get_the_buffered_rest_first() {
    let out = output(
        r#"
        local s = Stream.from({ "header\nbody-1", "|body-2" })
        print(s:readLine())
        print(s:read(), s:read(), s:read())
        local t = Stream.from({ "a\nb\nc", "d" })
        print(t:readLine())
        local got = {}
        for chunk in t:iter() do got[#got + 1] = chunk end
        print(table.concat(got, "|"))
        local u = Stream.from({ "x\ny", "z" })
        print(u:readLine())
        local seen = {}
        await(u:forEach(function(c) seen[#seen + 1] = c end))
        print(table.concat(seen, "|"))
        "#,
        3,
    );
    assert_eq!(
        out,
        ["header", "body-1\t|body-2\tnil", "a", "b\nc|d", "x", "y|z"],
        "the bytes readLine buffered past its line were lost"
    );
}

#[test]
fn read_line_keeps_a_partial_line_when_cancelled() {
    let out = output(
        r#"
        local ch = Channel.new(10)
        local s = Stream.from(ch)
        ch:send("hel")
        local p = Promise.new(function(resolve) resolve(s:readLine()) end) -- takes "hel", waits
        p:cancel()
        ch:send("lo\n")
        print(s:readLine())
        "#,
        3,
    );
    assert_eq!(out, ["hello"], "a cancelled readLine lost the part of the line it had read");
}

#[test]
fn read_line_returns_the_line_begun_before_an_error_or_a_bad_chunk() {
    let out = output(
        r#"
        local n = 0
        local s = Stream.from(function()
            n = n + 1
            if n == 1 then return "partial" end
            error("disk on fire", 0)
        end)
        print(s:readLine())
        print(s:readLine())
        local t = Stream.from({ "abc", {}, "def\n" })
        print(pcall(t.readLine, t))
        print(t:readLine())
        "#,
        3,
    );
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(out[0], "partial", "the line begun before the failure was lost");
    assert_eq!(out[1], "nil\tdisk on fire", "the failure is reported after the partial line");
    assert!(
        out[2].starts_with("false\t") && out[2].ends_with("readLine: the stream gave a table, not a string")
    );
    assert_eq!(out[3], "abcdef", "the line begun before a bad chunk was lost");
}

#[test]
fn read_line_strips_a_final_lone_cr() {
    let out = output(
        r#"
        local s = Stream.from({ "a\r\nb\r" })
        print(("%q"):format(s:readLine()), ("%q"):format(s:readLine()), s:readLine())
        "#,
        3,
    );
    assert_eq!(out, ["\"a\"\t\"b\"\tnil"], "the last line kept its '\\r'");
}

#[test]
fn read_line_copies_a_long_line_once() {
    // 300 chunks of 4 KiB make one 1.2 MiB line. With the collector stopped, the memory the read
    // allocates is measured: a line re-copied per chunk would allocate about 180 MiB.
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/test.lua",
        r#"
        local chunk = string.rep("x", 4096)
        local i = 0
        local s = Stream.from(function() i = i + 1; if i <= 300 then return chunk end end)
        task.wait()
        local line = s:readLine()
        print(#line, s:readLine())
        "#,
    );
    app.update();
    let runtime = app.world().resource::<LuaRuntime>();
    runtime.lua().gc_collect().unwrap();
    runtime.lua().gc_stop();
    let before = runtime.used_memory();
    app.update();
    let runtime = app.world().resource::<LuaRuntime>();
    let grew = runtime.used_memory().saturating_sub(before);
    runtime.lua().gc_restart();
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    assert_eq!(printed(&app), [format!("{}\tnil", 300 * 4096)]);
    assert!(grew < 16 * 1024 * 1024, "reading one 1.2 MiB line allocated {} KiB", grew / 1024);
}

/// An app whose assets folder is a fresh directory holding `secret.txt` next to it and, inside,
/// `inside.txt`, a link `up` to the folder above and a link `same` to itself.
fn file_app() -> (App, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOP SECRET\n").unwrap();
    std::fs::write(assets.join("inside.txt"), "inside\n").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path(), assets.join("up")).unwrap();
        std::os::unix::fs::symlink(&assets, assets.join("same")).unwrap();
    }
    let app = create_app_in(
        assets.to_str().unwrap(),
        LuaCoroutinesPlugin { print_to_stdout: false, hot_reload: false, ..default() },
    );
    (app, dir)
}

#[test]
#[cfg(unix)]
fn read_file_stream_refuses_symbolic_links_out_of_the_assets_folder() {
    let (mut app, _dir) = file_app();
    spawn_script(
        &mut app,
        "scripts/t.lua",
        r#"
        print(pcall(function() return readFileStream("up/secret.txt"):readLine() end))
        print(readFileStream("same/inside.txt"):readLine())
        "#,
    );
    run_until_printed_ok(&mut app, 2);
    let out = printed(&app);
    assert!(!out[0].contains("TOP SECRET"), "read a file outside the assets folder through a link: {out:?}");
    assert!(
        out[0].starts_with("false\t")
            && out[0].contains(
                "bad argument #1 to 'readFileStream' (path \"up/secret.txt\" leaves the assets folder"
            ),
        "{out:?}"
    );
    assert_eq!(out[1], "inside", "a link that stays inside the assets folder is followed");
}

#[test]
fn read_file_stream_refuses_a_path_with_a_nul_byte() {
    let (mut app, _dir) = file_app();
    spawn_script(&mut app, "scripts/t.lua", r#"print(pcall(readFileStream, "inside.txt\0b"))"#);
    run_until_printed_ok(&mut app, 1);
    let out = printed(&app);
    assert!(
        out[0].starts_with("false\t") && out[0].contains("bad argument #1 to 'readFileStream' (path"),
        "{out:?}"
    );
    assert!(out[0].contains("NUL"), "{out:?}");
}

#[test]
fn a_panicking_rust_producer_ends_the_stream_with_an_error() {
    let mut app = create_app();
    app.add_lua_stream_function("boom", 4, |mut tx: StreamSender| {
        AsyncComputeTaskPool::get()
            .spawn(async move {
                let _ = tx.send(1).await;
                panic!("producer bug");
            })
            .detach();
        Ok::<_, String>(())
    });
    spawn_script(&mut app, "scripts/t.lua", "local s = boom() print(s:read()) print(s:read())");
    run_until_printed_ok(&mut app, 2);
    assert_eq!(
        printed(&app),
        ["1", "nil\tthe stream's producer panicked"],
        "a producer's panic read as a clean end"
    );
}

#[test]
fn other_readers_see_an_error_when_the_creating_entity_is_despawned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("scripts")).unwrap();
    std::fs::write(dir.path().join("scripts/mailbox.lua"), "return {}").unwrap();
    let mut app = create_app_in(
        dir.path().to_str().unwrap(),
        LuaCoroutinesPlugin { print_to_stdout: false, hot_reload: false, ..default() },
    );
    app.add_lua_stream_function("endless", 2, |mut tx: StreamSender| {
        AsyncComputeTaskPool::get()
            .spawn(async move {
                let mut i = 0u64;
                loop {
                    i += 1;
                    if tx.send(i).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
        Ok::<_, String>(())
    });
    let maker =
        spawn_script(&mut app, "scripts/maker.lua", r#"require("mailbox").s = endless() task.wait(1000)"#);
    spawn_script(
        &mut app,
        "scripts/reader.lua",
        r#"
        local box = require("mailbox")
        while box.s == nil do task.wait() end
        print("first", box.s:read())
        while true do
            local v, err = box.s:read()
            if v == nil then print("end", err) break end
            task.wait()
        end
        "#,
    );
    run_until_printed_ok(&mut app, 1);
    app.world_mut().despawn(maker);
    run_until_printed_ok(&mut app, 2);
    assert_eq!(printed(&app), ["first\t1", "end\tstream cancelled"], "a despawn read as a clean end");
}

/// The sender a script's stream call handed out, for the test to drive.
#[derive(Resource)]
struct OneSender(crossbeam_channel::Receiver<StreamSender>);

#[test]
fn chunks_the_reader_took_in_a_batch_keep_their_room_until_it_comes_back() {
    let mut app = create_app();
    let (tx, rx) = crossbeam_channel::unbounded();
    app.add_lua_stream_function("fed", 3, move |sender: StreamSender| {
        tx.send(sender).map_err(|e| e.to_string())
    })
    .insert_resource(OneSender(rx));
    spawn_script(
        &mut app,
        "scripts/reader.lua",
        r#"
        local s = fed()
        task.wait()
        print("first", s:read())
        task.wait()
        print("rest", s:read(), s:read())
        print("more", s:read())
        "#,
    );
    run(&mut app, 1);
    let mut sender = app.world().resource::<OneSender>().0.try_recv().expect("the script asked for a stream");
    for i in 1..=3 {
        sender.try_send(i).unwrap();
    }
    run(&mut app, 1);
    assert_eq!(printed(&app), ["first\t1"]);
    // The reader took all three in one refill and read one: the other two still hold their room.
    assert_eq!(sender.len(), 3);
    assert!(
        matches!(sender.try_send(4), Err(bevy_lua_coroutines::Error::StreamFull)),
        "the producer ran ahead of the reader"
    );
    run(&mut app, 1);
    assert_eq!(printed(&app), ["first\t1", "rest\t2\t3"]);
    // Its queue is empty and it came back for more: the room is free again.
    sender.try_send(4).unwrap();
    run(&mut app, 2);
    assert_eq!(printed(&app), ["first\t1", "rest\t2\t3", "more\t4"]);
}

/// A chunk whose conversion to Lua fails.
struct Unconvertible;

impl serde::Serialize for Unconvertible {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("unconvertible chunk"))
    }
}

/// An app with `mixed()`, a Rust stream of 1, 2, a chunk that does not convert, 4 and 5.
fn mixed_app() -> App {
    let mut app = create_app();
    app.add_lua_stream_function("mixed", 8, |mut tx: StreamSender| {
        for i in [1, 2] {
            tx.try_send(i).unwrap();
        }
        tx.try_send(Unconvertible).unwrap();
        for i in [4, 5] {
            tx.try_send(i).unwrap();
        }
        Ok::<_, String>(())
    });
    app
}

#[test]
fn a_chunk_that_does_not_convert_ends_the_stream_after_the_chunks_before_it() {
    let mut app = mixed_app();
    spawn_script(
        &mut app,
        "scripts/t.lua",
        r#"
        local s = mixed()
        for _ = 1, 6 do
          local v, err = s:read()
          print(v, err)
        end
        "#,
    );
    run(&mut app, 5);
    let out = printed(&app);
    assert_eq!(out[..2], ["1\tnil", "2\tnil"]);
    assert_eq!(out.len(), 6);
    assert!(out[2..].iter().all(|l| l.starts_with("nil\tserialize error: unconvertible chunk")), "{out:?}");
}

/// An app with `chunks()`, a Rust stream of the chunks `list` gives, all sent before the script
/// reads any (so a refill takes them all into the script's queue at once).
fn listed_chunks_app(list: &'static [&'static str]) -> App {
    let mut app = create_app();
    app.add_lua_stream_function("chunks", 16, move |mut tx: StreamSender| {
        for chunk in list {
            tx.try_send(*chunk).unwrap();
        }
        Ok::<_, String>(())
    });
    app
}

#[test]
fn iter_over_a_rust_stream_gets_what_read_line_buffered_first() {
    let mut app = listed_chunks_app(&["a\nb", "c", "d"]);
    spawn_script(
        &mut app,
        "scripts/t.lua",
        r#"
        local s = chunks()
        print(s:readLine())
        local got = {}
        for chunk in s:iter() do got[#got + 1] = chunk end
        print(table.concat(got, "|"))
        "#,
    );
    run(&mut app, 4);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    assert_eq!(printed(&app), ["a", "b|c|d"], "iter handed out queued chunks before the text readLine kept");
}

#[test]
fn iter_over_a_rust_stream_stops_at_close_with_chunks_still_queued() {
    let mut app = listed_chunks_app(&["1", "2", "3", "4", "5"]);
    spawn_script(
        &mut app,
        "scripts/t.lua",
        r#"
        local s = chunks()
        local got = {}
        for chunk in s:iter() do
          got[#got + 1] = chunk
          if chunk == "2" then s:close() end
        end
        print(table.concat(got, "|"), s:read())
        "#,
    );
    run(&mut app, 4);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    assert_eq!(printed(&app), ["1|2\tnil"], "iter handed out chunks after the stream was closed");
}

#[test]
fn iter_over_a_rust_stream_raises_a_chunk_that_does_not_convert_then_ends() {
    let mut app = mixed_app();
    spawn_script(
        &mut app,
        "scripts/t.lua",
        r#"
        local s = mixed()
        local got = {}
        local ok, err = pcall(function()
          for v in s:iter() do got[#got + 1] = v end
        end)
        print(table.concat(got, "|"), ok, err)
        for v in s:iter() do got[#got + 1] = v end
        print(#got, s:read())
        "#,
    );
    run(&mut app, 5);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    let out = printed(&app);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].starts_with("1|2\tfalse\t") && out[0].contains("unconvertible chunk"), "{out:?}");
    assert_eq!(out[1], "2\tnil", "the stream went on after iter raised: {out:?}");
}
