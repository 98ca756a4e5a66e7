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
    assert_eq!(
        printed(&app),
        [
            format!("true\t0\t{}", float(0.0)),
            format!("true\t1\t{}", float(1.5)),
            format!("true\t2\t{}", float(3.0)),
            "cap\t8\tlen\t0".to_string()
        ]
    );
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

/// Spawns one script per name, `scripts/<name>.lua`, running `source` with `NAME` replaced by its
/// name (so what each prints says who printed it).
fn spawn_subscribers(app: &mut App, names: &[&str], source: &str) {
    for name in names {
        spawn_script(app, &format!("scripts/{name}.lua"), &source.replace("NAME", name));
    }
}

#[test]
fn forwarded_messages_reach_every_subscriber_once_in_order() {
    let mut app = create_app();
    app.add_message::<PlayerHit>().forward_message_to_scripts::<PlayerHit>("PlayerHit");
    spawn_subscribers(
        &mut app,
        &["a", "b"],
        r#"
        local hits = Messages.subscribe("PlayerHit")
        for i = 1, 3 do
          local hit = hits:receive()
          print("NAME", hit.by, hit.amount)
        end
        "#,
    );
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

/// Every subscriber gets its own copy of a forwarded message: one table for all let one script
/// change what another reads, or give it a metatable whose `__index` then ran as the reader.
#[test]
fn a_subscriber_cannot_change_what_another_subscriber_reads() {
    let mut app = create_app();
    app.add_message::<PlayerHit>().forward_message_to_scripts::<PlayerHit>("PlayerHit");
    spawn_script(
        &mut app,
        "scripts/attacker.lua",
        r#"
        local h = Messages.subscribe("PlayerHit"):receive()
        h.by, h.amount = "forged", 999
        setmetatable(h, { __index = function() print("ran as the reader") return "injected" end })
        "#,
    );
    spawn_script(
        &mut app,
        "scripts/victim.lua",
        r#"
        local h = Messages.subscribe("PlayerHit"):receive()
        print("victim", h.by, h.amount, h.extra)
        "#,
    );
    run(&mut app, 1);
    app.world_mut().write_message(PlayerHit { by: "orc".into(), amount: 3 });
    run(&mut app, 2);
    assert_eq!(printed(&app), ["victim\torc\t3\tnil"]);
}

#[derive(Message, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Volley {
    by: String,
    hits: Vec<u32>,
}

/// A forwarded message that holds a list reaches every subscriber, as a list each can read with
/// `#` and `ipairs`: the copy for the second subscriber read serde's array metatable through
/// `getmetatable`, which hides it (`false`), and raised, so the second and third subscribers
/// missed the message and the second was unsubscribed for good.
#[test]
fn a_message_with_a_list_reaches_every_subscriber() {
    let mut app = create_app();
    app.add_message::<Volley>().forward_message_to_scripts::<Volley>("Volley");
    spawn_subscribers(
        &mut app,
        &["a", "b", "c"],
        r#"
        local volleys = Messages.subscribe("Volley")
        for i = 1, 2 do
          local v = volleys:receive()
          local sum = 0
          for _, h in ipairs(v.hits) do sum = sum + h end
          print("NAME", v.by, #v.hits, sum)
        end
        "#,
    );
    run(&mut app, 1);
    app.world_mut().write_message(Volley { by: "orc".into(), hits: vec![1, 2] });
    run(&mut app, 2);
    app.world_mut().write_message(Volley { by: "elf".into(), hits: vec![3] });
    run(&mut app, 2);
    let mut got = printed(&app);
    got.sort();
    assert_eq!(
        got,
        ["a\telf\t1\t3", "a\torc\t2\t3", "b\telf\t1\t3", "b\torc\t2\t3", "c\telf\t1\t3", "c\torc\t2\t3"],
        "{:?}",
        errors(&app)
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

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Pos {
    x: f64,
    y: i16,
}

/// A nested struct of every leaf kind the batched path carries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Order {
    id: u8,
    big: i64,
    name: String,
    rush: bool,
    at: Pos,
}

fn order(id: u8, name: &str) -> Order {
    Order {
        id,
        big: -(1 << 40),
        name: name.into(),
        rush: id.is_multiple_of(2),
        at: Pos { x: 0.5 * id as f64, y: -(id as i16) },
    }
}

#[test]
fn nested_structs_cross_both_ways_unchanged_and_in_order() {
    let mut app = create_app();
    app.add_lua_channel::<Order>("orders", 16);
    let (tx, rx) = {
        let ch = app.world().resource::<LuaChannel<Order>>();
        (ch.sender(), ch.receiver())
    };
    // One of them has a non-ASCII name, which takes the serde path: the order still holds.
    for (id, name) in [(1, "axe"), (2, "épée"), (3, "bow")] {
        tx.try_send(order(id, name)).unwrap();
    }
    spawn_script(
        &mut app,
        "scripts/echo.lua",
        r#"
        local ch = Channel.named("orders")
        for _ = 1, 3 do
          local o = ch:receive()
          print(o.id, math.type and math.type(o.big) or type(o.big), o.name, o.rush, o.at.x, o.at.y)
          ch:send(o)
        end
        "#,
    );
    run(&mut app, 3);
    let int = if LUAJIT || LUAU { "number" } else { "integer" };
    assert_eq!(
        printed(&app),
        [
            format!("1\t{int}\taxe\tfalse\t{}\t-1", float(0.5)),
            format!("2\t{int}\tépée\ttrue\t{}\t-2", float(1.0)),
            format!("3\t{int}\tbow\tfalse\t{}\t-3", float(1.5)),
        ]
    );
    let back: Vec<Order> = rx.try_iter().collect();
    assert_eq!(back, [order(1, "axe"), order(2, "épée"), order(3, "bow")]);
}

#[test]
fn values_only_serde_accepts_keep_their_place_among_the_rest() {
    let mut app = create_app();
    app.add_lua_channel::<Order>("orders", 16);
    spawn_script(
        &mut app,
        "scripts/mixed.lua",
        r#"
        local ch = Channel.named("orders")
        local function o(id) return { id = id, big = -1099511627776, name = "n", rush = true, at = { x = 1, y = 2 } } end
        ch:send(o(1))
        local extra = o(2) extra.note = "ignored by serde"
        ch:send(extra)
        ch:send(o(3))
        local float = o(4) float.at.x = 2.5
        ch:send(float)
        local meta = setmetatable(o(5), {})
        ch:send(meta)
        ch:send(o(6))
        print(ch:len())
        "#,
    );
    run(&mut app, 2);
    let rx = app.world().resource::<LuaChannel<Order>>().receiver();
    let got: Vec<(u8, f64)> = rx.try_iter().map(|o| (o.id, o.at.x)).collect();
    assert_eq!(got, [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.5), (5, 1.0), (6, 1.0)]);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
}

#[test]
fn a_nested_field_that_does_not_fit_raises_with_its_path() {
    let mut app = create_app();
    app.add_lua_channel::<Order>("orders", 16);
    spawn_script(
        &mut app,
        "scripts/bad.lua",
        r#"
        local ch = Channel.named("orders")
        local function o(y) return { id = 1, big = 0, name = "n", rush = true, at = { x = 1, y = y } } end
        print(pcall(ch.send, ch, o(40000)))
        print(pcall(ch.send, ch, o(1.5)))
        print(pcall(ch.send, ch, { id = 300, big = 0, name = "n", rush = true, at = { x = 1, y = 1 } }))
        ch:send(o(7))
        "#,
    );
    run(&mut app, 2);
    let out = printed(&app);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out[0].starts_with("false\tcannot send to channel 'orders': at at.y: invalid value"), "{out:?}");
    assert!(out[1].starts_with("false\tcannot send to channel 'orders': at at.y: invalid type"), "{out:?}");
    assert!(out[2].starts_with("false\tcannot send to channel 'orders': at id: invalid value"), "{out:?}");
    let rx = app.world().resource::<LuaChannel<Order>>().receiver();
    let got: Vec<i16> = rx.try_iter().map(|o| o.at.y).collect();
    assert_eq!(got, [7]);
}

/// A type with an optional field and a list: not a flat struct, so every value takes serde.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Loose {
    tag: Option<String>,
    items: Vec<u32>,
}

#[test]
fn types_that_are_not_flat_structs_still_cross_through_serde() {
    let mut app = create_app();
    app.add_lua_channel::<Loose>("loose", 4);
    let tx = app.world().resource::<LuaChannel<Loose>>().sender();
    tx.try_send(Loose { tag: Some("a".into()), items: vec![1, 2] }).unwrap();
    spawn_script(
        &mut app,
        "scripts/loose.lua",
        r#"
        local ch = Channel.named("loose")
        local v = ch:receive()
        print(v.tag, #v.items)
        ch:send({ items = { 3 } })
        print(pcall(ch.send, ch, { items = "x" }))
        "#,
    );
    run(&mut app, 2);
    let out = printed(&app);
    assert_eq!(out[0], "a\t2");
    assert!(out[1].starts_with("false\tcannot send to channel 'loose': at items: invalid type"), "{out:?}");
    let rx = app.world().resource::<LuaChannel<Loose>>().receiver();
    assert_eq!(rx.try_iter().collect::<Vec<_>>(), [Loose { tag: None, items: vec![3] }]);
}

/// What a system after the step received from the channel, per frame.
#[derive(Resource, Default)]
struct Received(Vec<Vec<u32>>);

#[test]
fn a_system_after_the_step_receives_what_scripts_sent_in_that_frame() {
    let mut app = channel_app(64);
    app.init_resource::<Received>();
    app.add_systems(
        Update,
        (|ch: Res<LuaChannel<Damage>>, mut got: ResMut<Received>| {
            got.0.push(ch.receiver().try_iter().map(|d| d.target).collect());
        })
        .after(LuaCoroutinesSystems::Step),
    );
    spawn_script(
        &mut app,
        "scripts/per_frame.lua",
        r#"
        local ch = Channel.named("damage")
        for frame = 1, 3 do
          for i = 1, frame do ch:send({ target = frame * 10 + i, amount = 0 }) end
          task.wait()
        end
        "#,
    );
    run(&mut app, 4);
    let got: Vec<Vec<u32>> =
        app.world().resource::<Received>().0.iter().filter(|v| !v.is_empty()).cloned().collect();
    assert_eq!(got, [vec![11], vec![21, 22], vec![31, 32, 33]]);
}

/// A type that rejects fields it does not know.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct Strict {
    a: u32,
    inner: Pos,
}

#[test]
fn a_type_that_denies_unknown_fields_still_raises_on_an_extra_key() {
    let mut app = create_app();
    app.add_lua_channel::<Strict>("strict", 4);
    spawn_script(
        &mut app,
        "scripts/strict.lua",
        r#"
        local ch = Channel.named("strict")
        ch:send({ a = 1, inner = { x = 1, y = 1 } })
        print(pcall(ch.send, ch, { a = 2, inner = { x = 1, y = 1 }, b = 3 }))
        ch:send({ a = 3, inner = { x = 1, y = 1 } })
        "#,
    );
    run(&mut app, 2);
    let out = printed(&app);
    assert!(out[0].starts_with("false\tcannot send to channel 'strict': at b: unknown field `b`"), "{out:?}");
    let rx = app.world().resource::<LuaChannel<Strict>>().receiver();
    assert_eq!(rx.try_iter().map(|s| s.a).collect::<Vec<_>>(), [1, 3]);
}

/// Serializes as `{ n = ... }`, or fails for `n == 0` (a value the bridge cannot convert).
#[derive(Deserialize, Debug, Clone, PartialEq)]
struct Flaky {
    n: u32,
}

impl Serialize for Flaky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeStruct};
        if self.n == 0 {
            return Err(S::Error::custom("flaky zero"));
        }
        let mut st = s.serialize_struct("Flaky", 1)?;
        st.serialize_field("n", &self.n)?;
        st.end()
    }
}

#[test]
fn a_value_rust_sent_that_does_not_convert_loses_none_of_the_others() {
    let mut app = create_app();
    app.add_lua_channel::<Flaky>("flaky", 16);
    let tx = app.world().resource::<LuaChannel<Flaky>>().sender();
    for n in [1, 2, 0, 4, 5] {
        tx.try_send(Flaky { n }).unwrap();
    }
    spawn_script(
        &mut app,
        "scripts/flaky.lua",
        r#"
        local ch = Channel.named("flaky")
        for _ = 1, 5 do
          local ok, v = pcall(ch.receive, ch)
          if ok then print(v.n) else print("error", string.find(tostring(v), "flaky zero", 1, true) ~= nil) end
        end
        "#,
    );
    run(&mut app, 3);
    assert_eq!(printed(&app), ["1", "2", "error\ttrue", "4", "5"]);
}

#[test]
fn strings_cross_unchanged_however_many_were_sent_before() {
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Named {
        name: String,
    }
    let mut app = create_app();
    app.add_lua_channel::<Named>("names", 1000);
    spawn_script(
        &mut app,
        "scripts/names.lua",
        r#"
        local ch = Channel.named("names")
        local long = string.rep("a", 100)
        for round = 1, 2 do
          for i = 1, 300 do ch:send({ name = "n" .. i }) end
          ch:send({ name = "épée" })
          ch:send({ name = long })
          ch:send({ name = "n7" })
        end
        "#,
    );
    run(&mut app, 2);
    let rx = app.world().resource::<LuaChannel<Named>>().receiver();
    let got: Vec<String> = rx.try_iter().map(|n| n.name).collect();
    let mut want = Vec::new();
    for _ in 0..2 {
        want.extend((1..=300).map(|i| format!("n{i}")));
        want.extend(["épée".to_string(), "a".repeat(100), "n7".to_string()]);
    }
    assert_eq!(got, want);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
}

/// A subscription only its waiting receiver holds (`Messages.subscribe(name):receive()`, or a
/// loop over its `iter()`) stays subscribed: the channel was once collected under the waiting
/// task, with the subscription, and the message never came.
#[test]
fn a_subscription_held_only_by_its_waiting_receiver_still_receives() {
    let mut app = create_app();
    app.add_message::<PlayerHit>().forward_message_to_scripts::<PlayerHit>("PlayerHit");
    spawn_script(&mut app, "scripts/once.lua", "print('once', Messages.subscribe('PlayerHit'):receive().by)");
    spawn_script(
        &mut app,
        "scripts/loop.lua",
        "for hit in Messages.subscribe('PlayerHit'):iter() do print('loop', hit.by) end",
    );
    spawn_script(&mut app, "scripts/collector.lua", "while true do collectgarbage() task.wait() end");
    run(&mut app, 3);
    app.world_mut().write_message(PlayerHit { by: "orc".into(), amount: 3 });
    run(&mut app, 2);
    assert_eq!(printed(&app), ["once\torc", "loop\torc"], "{:#?}", errors(&app));
}
