//! The runner `examples/run.rs`: options, output streams and exit codes.

mod common;
use common::{LUAJIT, LUAU, float, per_flavour};
use std::path::PathBuf;
use std::process::{Command, Output};

/// The runner binary; `cargo test` builds examples before running tests.
fn runner() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target profile dir");
    let bin = dir.join("examples").join(format!("run{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "run"])
            .status()
            .expect("cargo build --example run");
        assert!(status.success(), "building the runner failed");
    }
    bin
}

/// Writes `source` to a fresh folder as `name` and runs the runner on it with `args`.
fn run_script(name: &str, source: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, source).expect("write script");
    Command::new(runner()).arg(&path).args(args).env_remove("LLM_BASE_URL").output().expect("run the runner")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn exit_0_when_every_task_finishes_and_print_goes_to_stdout() {
    let o = run_script("ok.lua", "print('one')\ntask.wait(0.1)\nprint('two', time.frame())\n", &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "one\ntwo\t7\n");
    assert_eq!(stderr(&o), "", "nothing but script output");
}

#[test]
fn dt_sets_the_fixed_step_for_game_time() {
    let o = run_script(
        "dt.lua",
        "local e = task.wait(1)\nprint(time.frame(), e, time.elapsed())\n",
        &["--dt", "0.25"],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), format!("5\t{}\t{}\n", float(1.0), float(1.0)));
}

#[test]
fn exit_1_on_a_script_error_with_the_traceback_on_stderr() {
    let o = run_script("bad.lua", "print('before')\ntask.wait()\nlocal t = nil\nprint(t.x)\n", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "before\n");
    let err = stderr(&o);
    let problem = per_flavour(
        "attempt to index a nil value (local 't')",
        "attempt to index local 't' (a nil value)",
        "attempt to index nil with 'x'",
    );
    assert!(err.contains(&format!("bad.lua:4: {problem}")), "{err}");
    if !LUAU {
        // Luau keeps no stack in a coroutine that died of an error.
        assert!(err.contains("stack traceback:"), "{err}");
    }
}

#[test]
fn exit_2_on_bad_arguments_a_missing_file_or_a_syntax_error() {
    let o = run_script("ok.lua", "print('x')", &["--frames", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--frames: invalid value 'lots'"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");

    let o = run_script("ok.lua", "print('x')", &["--stdlib", "some"]);
    assert_eq!(o.status.code(), Some(2));

    let o = Command::new(runner()).arg("/nonexistent/script.lua").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));

    let o = run_script("typo.lua", "print('a'\n", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("typo.lua:2:"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

#[test]
fn exit_2_with_the_usage_for_a_step_or_pace_no_duration_can_hold() {
    for args in [["--dt", "1e300"], ["--dt", "-1"], ["--dt", "inf"], ["--fps", "1e-300"], ["--fps", "0"]] {
        let o = run_script("ok.lua", "print('x')", &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(&format!("{}: invalid value", args[0])), "{args:?}: {err}");
        assert!(err.contains("usage: run SCRIPT.lua"), "{args:?}: {err}");
        assert_eq!(stdout(&o), "", "{args:?}: nothing ran");
    }
}

#[test]
fn a_spawned_script_that_fails_to_load_is_a_script_error_and_the_rest_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("broken.lua"), "print('child'").unwrap();
    let main = dir.path().join("main.lua");
    std::fs::write(
        &main,
        "world.spawn{ script = 'broken.lua' }\n\
         assert(not pcall(world.spawn, { script = 'missing.lua' }), 'a missing file is refused')\n\
         task.wait(0.1)\nprint('main goes on')\n",
    )
    .unwrap();
    let o = Command::new(runner()).arg(&main).args(["--frames", "100"]).output().expect("run the runner");
    assert_eq!(o.status.code(), Some(1), "a script error, not bad arguments: {}", stderr(&o));
    assert_eq!(stdout(&o), "main goes on\n", "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("broken.lua:1:"), "the syntax error is reported: {err}");
}

#[test]
fn exit_3_when_frames_run_out_and_1_wins_over_3() {
    let o = run_script("forever.lua", "while true do task.wait(1) end", &["--frames", "10"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stderr(&o).contains("10 frames ran out with 1 tasks still waiting"), "{}", stderr(&o));

    let o = run_script(
        "both.lua",
        "task.spawn(function() error('x') end)\nwhile true do task.wait(1) end",
        &["--frames", "10"],
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn entities_spawns_one_instance_each_and_stats_go_to_stderr() {
    let o = run_script("many.lua", "task.wait()\nprint('hi')\n", &["--entities", "4", "--stats"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hi\nhi\nhi\nhi\n");
    let err = stderr(&o);
    for line in ["frames: 2", "tasks resumed: 8", "step time per frame: mean", "lua memory:"] {
        assert!(err.contains(line), "missing {line:?} in {err}");
    }
}

#[test]
fn stdlib_all_and_memory_limit_are_passed_to_the_plugin() {
    // Luau has no `io`: `debug.info` is what only `--stdlib all` grants there.
    let src = if LUAU { "print(type(debug.info))" } else { "print(type(io))" };
    let o = run_script("io.lua", src, &[]);
    assert_eq!(stdout(&o), "nil\n");
    let o = run_script("io.lua", src, &["--stdlib", "all"]);
    assert_eq!(stdout(&o), if LUAU { "function\n" } else { "table\n" });
    let o = run_script("hog.lua", "print(pcall(string.rep, 'x', 8 * 1024 * 1024))", &["--memory-limit", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("false\t"), "{}", stdout(&o));
}

#[test]
fn watch_reloads_the_script_and_its_modules_while_running() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("main.lua");
    let module = dir.path().join("util.lua");
    let source = |word: &str| {
        format!(
            "print('{word}', require('util').name)\nstate.n = (state.n or 0) + 1\nprint('runs', state.n)\n"
        )
    };
    std::fs::write(&script, source("first")).unwrap();
    std::fs::write(&module, "return { name = 'util-1' }").unwrap();
    let mut child = Command::new(runner())
        .arg(&script)
        .args(["--watch", "--fps", "100", "--frames", "1500"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the runner");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let expect = |want: &str, seen: &mut Vec<String>| {
        while !seen.iter().any(|l| l == want) {
            match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("the runner never printed {want:?}; it printed {seen:?}"),
            }
        }
    };
    expect("first\tutil-1", &mut seen);
    expect("runs\t1", &mut seen);
    std::fs::write(&script, source("second")).unwrap();
    expect("second\tutil-1", &mut seen);
    expect("runs\t2", &mut seen);
    std::fs::write(&module, "return { name = 'util-2' }").unwrap();
    expect("second\tutil-2", &mut seen);
    expect("runs\t3", &mut seen);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen,
        ["first\tutil-1", "runs\t1", "second\tutil-1", "runs\t2", "second\tutil-2", "runs\t3"],
        "each save reloaded once, keeping state"
    );
}

#[test]
fn spawned_scripts_start_on_the_frame_after_the_spawn_run_after_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 1..=40 {
        std::fs::write(dir.path().join(format!("c{i}.lua")), format!("print('c{i}', time.frame())\n"))
            .unwrap();
    }
    // The parent ends in the step that spawns: the run goes on for the children it spawned.
    let main = dir.path().join("main.lua");
    let source = "task.wait(0.1)\nfor i = 1, 40 do world.spawn{ script = 'c' .. i .. '.lua' } end\nprint('spawned', time.frame())\n";
    std::fs::write(&main, source).unwrap();
    let mut expected = String::from("spawned\t7\n");
    for i in 1..=40 {
        expected.push_str(&format!("c{i}\t8\n"));
    }
    for run in 0..3 {
        let o = Command::new(runner()).arg(&main).output().expect("run the runner");
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        assert_eq!(
            stdout(&o),
            expected,
            "run {run}: every child starts in the sync of the frame after the spawn"
        );
    }
}

#[test]
fn a_reader_that_goes_away_ends_output_quietly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("talk.lua");
    std::fs::write(
        &script,
        "local i = 0\nwhile true do\n  i = i + 1\n  print('line', i)\n  task.wait()\nend\n",
    )
    .unwrap();
    let mut child = Command::new(runner())
        .arg(&script)
        .args(["--frames", "100000"])
        .env_remove("LLM_BASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the runner");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    for i in 1..=5 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, format!("line\t{i}\n"));
    }
    drop(out); // as `head -5` does
    let o = child.wait_with_output().expect("the runner ends");
    // A print that raised would be reported on stderr, and the exit code would be 1.
    assert_eq!(stderr(&o), "", "no panic, backtrace or script error when stdout closes");
    assert_eq!(o.status.code(), Some(0), "a closed stdout ends the run quietly");
}

#[test]
#[cfg(feature = "llm")]
fn llm_and_llm_bridge_are_the_local_model_with_the_delay_given() {
    use bevy_lua_coroutines::{LlmRequest, LocalLlm};
    let request =
        |prompt: &str| LlmRequest { prompt: prompt.into(), max_tokens: Some(4), ..Default::default() };
    let answer =
        |prompt: &str| LocalLlm::new(std::time::Duration::ZERO).tokens(&request(prompt)).collect::<String>();
    let source = "print(await(llm.generateAsync('Is the pass open?', { maxTokens = 4 })))\n\
                  print(await(llmBridge.generateAsync('Where does the road lead?', { maxTokens = 4 })))\n";
    let o = run_script("npc.lua", source, &["--llm-delay", "0"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(
        stdout(&o),
        format!("{}\n{}\n", answer("Is the pass open?"), answer("Where does the road lead?"))
    );

    // Four tokens 0.1 s apart take at least 0.4 s of wall time. The bound is read around the
    // whole run, not by the script: the real clock a script reads is taken at the start of its
    // frame, which can begin before the last token arrives, so a script's reading may fall short
    // by up to a frame, while a run cannot end before its sleeps do.
    let timed = "print(await(llm.generateAsync('hi', { maxTokens = 4 })) ~= nil)\n";
    let started = std::time::Instant::now();
    let o = run_script("slow.lua", timed, &["--llm-delay", "0.1", "--fps", "60"]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert_eq!(stdout(&o), "true\n");
    assert!(took >= std::time::Duration::from_millis(400), "four tokens 0.1 s apart took {took:?}");

    for bad in ["-1", "x", "inf"] {
        let o = run_script("npc.lua", "", &["--llm-delay", bad]);
        assert_eq!(o.status.code(), Some(2), "--llm-delay {bad}");
        assert!(stderr(&o).contains("--llm-delay: invalid value"), "{}", stderr(&o));
    }
}

#[test]
fn seed_seeds_select_and_math_random() {
    // Four ready cases, twenty picks; then math.random.
    let source = "local chans = {}\nfor i = 1, 4 do chans[i] = Channel.new(math.huge) end\n\
                  local picks = {}\nfor _ = 1, 20 do\n  for i = 1, 4 do chans[i]:send(i) end\n\
                    local cases = {}\n  for i = 1, 4 do cases[i] = { chans[i], 'receive' } end\n\
                    picks[#picks + 1] = Channel.select(cases)\n\
                    for i = 1, 4 do while chans[i]:tryReceive() do end end\nend\n\
                  print(table.concat(picks, ' '))\nprint(math.random(1000000), math.random(1000000))\n";
    let run = |args: &[&str]| {
        let o = run_script("seed.lua", source, args);
        assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
        stdout(&o)
    };
    let lines = |out: String| out.lines().map(String::from).collect::<Vec<_>>();
    let one = lines(run(&["--seed", "1"]));
    assert_eq!(lines(run(&["--seed", "1"])), one, "the same seed replays select and math.random");
    let two = lines(run(&["--seed", "2"]));
    assert_ne!(two[0], one[0], "another seed picks other cases");
    assert_ne!(two[1], one[1], "another seed draws other numbers");
    assert_eq!(lines(run(&[]))[0], lines(run(&[]))[0], "select's default seed replays too");

    let o = run_script("seed.lua", "", &["--seed", "-3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--seed: invalid value '-3'"), "{}", stderr(&o));
}

/// Like [`run_script`], with `input` on stdin.
fn run_script_with_input(name: &str, source: &str, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, source).expect("write script");
    let mut child = Command::new(runner())
        .arg(&path)
        .args(args)
        .env_remove("LLM_BASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the runner");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("run the runner")
}

#[test]
fn inspect_prints_the_task_list_on_stderr_at_the_end() {
    let o = run_script(
        "stuck.lua",
        "local ch = Channel.new()\nstate.ch = ch\ntask.spawn(function() ch:receive() end)\nlocal function nap() task.wait(60) end\nnap()\n",
        &["--inspect", "--frames", "5"],
    );
    assert_eq!(o.status.code(), Some(3), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("2 live tasks"), "{err}");
    assert!(
        err.contains("stuck.lua on ")
            && err.contains(": receive on Channel(unbuffered)#1 at stuck.lua:3 in anonymous function"),
        "{err}"
    );
    assert!(err.contains(": time (due in 59.9") && err.contains("at stuck.lua:4 in nap; 1 resumes"), "{err}");
    assert_eq!(stdout(&o), "", "the list goes to stderr");
}

#[test]
fn inspect_every_prints_the_list_every_n_frames() {
    let o = run_script("tick.lua", "for i = 1, 6 do task.wait() end\n", &["--inspect-every", "2"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    let frames: Vec<&str> = err.lines().filter(|l| l.starts_with("frame ")).collect();
    assert_eq!(frames, ["frame 2: 1 live tasks", "frame 4: 1 live tasks", "frame 6: 1 live tasks"], "{err}");
    assert!(
        err.contains("tick.lua on ") && err.contains("frames (1 left) at tick.lua:1 in main chunk"),
        "{err}"
    );
}

#[test]
fn stats_name_the_costliest_scripts() {
    let o = run_script("cost.lua", "for i = 1, 3 do task.wait() end\n", &["--stats"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("costliest scripts"), "{err}");
    assert!(
        err.contains("  cost.lua: ") && err.contains(" total, ") && err.contains(" 4 resumes, 1 instances"),
        "{err}"
    );
}

#[test]
#[cfg_attr(feature = "luau", ignore = "the console runs lines with `load`, which Luau does not have")]
fn repl_runs_each_line_in_a_console_instance_and_prints_values_or_errors() {
    let o = run_script_with_input(
        "game.lua",
        "for i = 1, 5 do task.wait() end\nprint('game over')\n",
        &["--repl", "--fps", "1000"],
        "1 + 1\nlocal x = 3 return x * 2, 'six'\nerror('boom')\nawait(Promise.delay(0.01)) >= 0.01\nprint(entity:get('Name'), time.frame() > 0)\nthis is not lua\n",
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    let console: Vec<&str> = out.lines().filter(|l| *l != "game over").collect();
    // LuaJIT's `error` adds no position in `return error('boom')`: the tail call left no line.
    let boom = if LUAJIT { "error: boom" } else { "error: console:1: boom" };
    assert_eq!(console[..5], ["2", "6\tsix", boom, "true", "console\ttrue"], "{out}");
    assert!(console[5].starts_with("error: console:1:"), "a syntax error is reported: {out}");
    assert!(out.contains("game over"), "the game ran on: {out}");
}
