mod common;
use common::*;

#[test]
fn smoke() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/a.lua",
        r#"
        print("start", time.frame())
        local e = task.wait(0.05)
        print("waited", e >= 0.05, time.frame())
        task.spawn(function() print("spawned"); task.wait(); print("spawned resumed") end)
        task.defer(function(x) print("deferred", x) end, 42)
        task.delay(0.1, function() print("delayed") end)
        print(pcall(task.wait, {}))
        state.x = 1
        error("boom")
    "#,
    );
    run(&mut app, 20);
    for l in printed(&app) {
        println!("{l}");
    }
    for e in errors(&app) {
        println!("ERR {} | {} | {}", e.script, e.message, e.traceback);
    }
    println!("live {}", live_tasks(&app));
}
