//! Typed channels between scripts and Rust systems, and Bevy messages both ways:
//! values cross as tables through serde, both directions are bounded, a value that does not fit
//! raises in the script that sent it, and messages reach each subscriber once, in order.

mod common;
use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Damage {
    target: u32,
    amount: f32,
}

fn channel_app(capacity: usize) -> App {
    let mut app = create_app();
    app.add_lua_channel::<Damage>("damage", capacity);
    app
}

#[test]
fn values_from_rust_arrive_as_tables_in_order() {
    let mut app = channel_app(8);
    let tx = app.world().resource::<LuaChannel<Damage>>().sender();
    for i in 0..3 {
        tx.try_send(Damage { target: i, amount: 1.5 * i as f32 }).unwrap();
    }
    spawn_script(
        &mut app,
        "scripts/recv.lua",
        r#"
        local ch = Channel.named("damage")
        for i = 1, 3 do
          local d, ok = ch:receive()
          print(ok, d.target, d.amount)
        end
        print("cap", ch:cap(), "len", ch:len())
        "#,
    );
    run(&mut app, 3);
    assert_eq!(printed(&app), ["true\t0\t0.0", "true\t1\t1.5", "true\t2\t3.0", "cap\t8\tlen\t0"]);
}

#[test]
fn values_scripts_send_arrive_in_rust_as_the_type() {
    let mut app = channel_app(8);
    spawn_script(
        &mut app,
        "scripts/send.lua",
        r#"
        local ch = Channel.named("damage")
        ch:send({ target = 7, amount = 2.5 })
        ch:send({ target = 8, amount = 1 })
        print("sent")
        "#,
    );
    run(&mut app, 2);
    let rx = app.world().resource::<LuaChannel<Damage>>().receiver();
    let got: Vec<Damage> = rx.try_iter().collect();
    assert_eq!(got, [Damage { target: 7, amount: 2.5 }, Damage { target: 8, amount: 1.0 }]);
    assert_eq!(printed(&app), ["sent"]);
}

#[test]
fn a_full_channel_makes_the_script_wait_instead_of_growing() {
    let mut app = channel_app(2);
    spawn_script(
        &mut app,
        "scripts/flood.lua",
        r#"
        local ch = Channel.named("damage")
        for i = 1, 5 do
          ch:send({ target = i, amount = 0 })
          print("sent", i, time.frame())
        end
        "#,
    );
    run(&mut app, 3);
    let rx = app.world().resource::<LuaChannel<Damage>>().receiver();
    assert_eq!(rx.len(), 2, "the channel holds its capacity, no more");
    assert_eq!(printed(&app).len(), 2, "the third send waits: {:?}", printed(&app));
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(rx.try_iter().map(|d| d.target));
        app.update();
        assert!(rx.len() <= 2, "never more than the capacity");
    }
    got.extend(rx.try_iter().map(|d| d.target));
    assert_eq!(got, [1, 2, 3, 4, 5], "every value arrives once, in order");
    assert_eq!(printed(&app).len(), 5);
}

#[test]
fn rust_cannot_run_ahead_of_scripts() {
    let app = channel_app(2);
    let tx = app.world().resource::<LuaChannel<Damage>>().sender();
    assert!(tx.try_send(Damage { target: 1, amount: 0.0 }).is_ok());
    assert!(tx.try_send(Damage { target: 2, amount: 0.0 }).is_ok());
    assert!(tx.try_send(Damage { target: 3, amount: 0.0 }).is_err(), "bounded toward scripts too");
}

#[test]
fn a_value_that_does_not_fit_raises_with_the_field_and_nothing_else_is_lost() {
    let mut app = channel_app(8);
    spawn_script(
        &mut app,
        "scripts/bad.lua",
        r#"
        local ch = Channel.named("damage")
        ch:send({ target = 1, amount = 1 })
        local ok, err = pcall(ch.send, ch, { target = 2, amount = "lots" })
        print(ok, err)
        ch:send({ target = 3, amount = 3 })
        "#,
    );
    run(&mut app, 2);
    let out = printed(&app);
    assert_eq!(out.len(), 1);
    assert!(out[0].starts_with("false\tcannot send to channel 'damage': at amount: invalid type"), "{out:?}");
    let rx = app.world().resource::<LuaChannel<Damage>>().receiver();
    let got: Vec<u32> = rx.try_iter().map(|d| d.target).collect();
    assert_eq!(got, [1, 3]);
}

#[test]
fn an_unknown_channel_name_raises() {
    let out = output(r#"print(pcall(Channel.named, "nope"))"#, 2);
    assert_eq!(out, ["false\tno channel named 'nope' was declared by the game"]);
}

#[test]
fn a_script_despawned_while_waiting_on_a_typed_channel_loses_nothing() {
    let mut app = channel_app(4);
    let e = spawn_script(
        &mut app,
        "scripts/wait.lua",
        "local v = Channel.named('damage'):receive() print('never', v)",
    );
    run(&mut app, 2);
    app.world_mut().despawn(e);
    run(&mut app, 1);
    let tx = app.world().resource::<LuaChannel<Damage>>().sender();
    tx.try_send(Damage { target: 9, amount: 9.0 }).unwrap();
    spawn_script(&mut app, "scripts/next.lua", "print('got', Channel.named('damage'):receive().target)");
    run(&mut app, 3);
    assert_eq!(printed(&app), ["got\t9"]);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct PlayerHit {
    by: String,
    amount: u32,
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct EnemyDied {
    id: u32,
}

#[test]
fn forwarded_messages_reach_every_subscriber_once_in_order() {
    let mut app = create_app();
    app.add_message::<PlayerHit>().forward_message_to_scripts::<PlayerHit>("PlayerHit");
    for name in ["a", "b"] {
        spawn_script(
            &mut app,
            &format!("scripts/{name}.lua"),
            &format!(
                r#"
                local hits = Messages.subscribe("PlayerHit")
                for i = 1, 3 do
                  local hit = hits:receive()
                  print("{name}", hit.by, hit.amount)
                end
                "#
            ),
        );
    }
    run(&mut app, 1);
    app.world_mut().write_message(PlayerHit { by: "orc".into(), amount: 3 });
    app.world_mut().write_message(PlayerHit { by: "elf".into(), amount: 5 });
    run(&mut app, 1);
    app.world_mut().write_message(PlayerHit { by: "imp".into(), amount: 1 });
    run(&mut app, 2);
    assert_eq!(
        printed(&app),
        ["a\torc\t3", "a\telf\t5", "b\torc\t3", "b\telf\t5", "a\timp\t1", "b\timp\t1"],
        "each subscriber gets each message once, in order"
    );
}

/// Deaths a system after the step read, with the frame it read them in.
#[derive(Resource, Default)]
struct Read(Vec<(u32, u64)>);

#[test]
fn messages_scripts_write_are_read_after_the_step_in_the_same_frame() {
    let mut app = create_app();
    app.add_message::<EnemyDied>().add_script_message::<EnemyDied>("EnemyDied").init_resource::<Read>();
    app.add_systems(
        Update,
        (|mut reader: MessageReader<EnemyDied>, mut read: ResMut<Read>, runtime: Res<LuaRuntime>| {
            let frame = runtime.stats().resumed;
            read.0.extend(reader.read().map(|m| (m.id, frame)));
        })
        .after(LuaCoroutinesSystems::Step),
    );
    spawn_script(
        &mut app,
        "scripts/die.lua",
        r#"
        Messages.write("EnemyDied", { id = 4 })
        Messages.write("EnemyDied", { id = 5 })
        print(pcall(Messages.write, "EnemyDied", { id = "x" }))
        print(pcall(Messages.write, "Unknown", {}))
        "#,
    );
    run(&mut app, 1);
    let read = &app.world().resource::<Read>().0;
    assert_eq!(read.iter().map(|r| r.0).collect::<Vec<_>>(), [4, 5], "read in the frame they were written");
    let out = printed(&app);
    assert!(
        out[0].starts_with("false\t") && out[0].contains("bad argument #2 to 'write' (at id: invalid type"),
        "{out:?}"
    );
    assert_eq!(out[1], "false\tscripts may not write a message type named 'Unknown'");
}
