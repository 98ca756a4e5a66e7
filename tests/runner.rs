//! The runner `examples/run.rs`: options, output streams and exit codes.

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
    Command::new(runner()).arg(&path).args(args).output().expect("run the runner")
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
    assert_eq!(stdout(&o), "5\t1.0\t1.0\n");
}

#[test]
fn exit_1_on_a_script_error_with_the_traceback_on_stderr() {
    let o = run_script("bad.lua", "print('before')\ntask.wait()\nlocal t = nil\nprint(t.x)\n", &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "before\n");
    let err = stderr(&o);
    assert!(err.contains("bad.lua:4: attempt to index a nil value (local 't')"), "{err}");
    assert!(err.contains("stack traceback:"), "{err}");
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
        "world.spawn{ script = 'broken.lua' }\nworld.spawn{ script = 'missing.lua' }\n\
         task.wait(0.1)\nprint('main goes on')\n",
    )
    .unwrap();
    let o = Command::new(runner()).arg(&main).args(["--frames", "100"]).output().expect("run the runner");
    assert_eq!(o.status.code(), Some(1), "a script error, not bad arguments: {}", stderr(&o));
    assert_eq!(stdout(&o), "main goes on\n", "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("broken.lua:1:"), "the syntax error is reported: {err}");
    assert!(err.contains("missing.lua"), "the missing file is reported: {err}");
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
    let o = run_script("io.lua", "print(type(io))", &[]);
    assert_eq!(stdout(&o), "nil\n");
    let o = run_script("io.lua", "print(type(io))", &["--stdlib", "all"]);
    assert_eq!(stdout(&o), "table\n");
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
