//! The extension point for Rust-backed channels (`Channel._external(ext, name)`, what typed
//! channels and Rust streams are built on), exercised with a fake `ext` written in Lua. Scripts
//! never see the constructor (an `ext` written in Lua would run outside the instruction budget),
//! so these tests live inside the crate, where it can be reached without making it public.

use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;

use crate::runtime::ChannelLua;
use crate::{LuaCoroutinesPlugin, LuaRuntime, LuaScript, LuaScripts, ScriptError, ScriptPrint};

/// A fake external channel: its values live in a Lua queue the "Rust side" (`rust.push`,
/// `rust.pull`, `rust.close`) also reaches behind the channel's back, as a crossbeam channel would.
/// `send` refuses functions, standing in for a serde conversion error.
const FAKE: &str = r#"
    local function fake(capacity)
      local q, head, n, closed = {}, 1, 0, false
      local ext = {}
      function ext.can_send() return not closed and n < capacity end
      function ext.send(v)
        if type(v) == "function" then error("cannot convert a function", 0) end
        q[head + n] = v
        n = n + 1
      end
      function ext.can_receive() return n > 0 end
      function ext.receive()
        local v = q[head]
        q[head] = nil
        head = head + 1
        n = n - 1
        return v
      end
      function ext.len() return n end
      function ext.cap() return capacity end
      function ext.close() closed = true end
      function ext.is_closed() return closed end
      local rust = {
        push = function(v) q[head + n] = v n = n + 1 end,
        pull = function() return ext.receive() end,
        close = function() closed = true end,
      }
      return makeExternal(ext, "fake"), rust
    end
"#;

/// Runs `src` as one script with the constructor of Rust-backed channels (hidden from scripts)
/// shared as the global `makeExternal`; checks it raised nothing and returns what it printed.
fn output_external(src: &str, frames: usize) -> Vec<String> {
    let mut app = App::new();
    app.add_plugins((MinimalPlugins, AssetPlugin::default()))
        .add_plugins(LuaCoroutinesPlugin { print_to_stdout: false, hot_reload: false, ..default() })
        .insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_nanos(16_666_667)))
        .init_resource::<Collected>()
        .add_systems(Last, collect);
    let lua = app.world().resource::<LuaRuntime>().lua().clone();
    let make = lua.app_data_ref::<ChannelLua>().expect("the channel module is installed").external.clone();
    let base = lua.globals().metatable().expect("the base is a read-only view");
    let store: mlua::Table = base.get("__index").expect("the view reads through to the store");
    store.raw_set("makeExternal", make).expect("the store takes the constructor");
    let script = LuaScript::new("scripts/test.lua", src);
    let handle = app.world_mut().resource_mut::<Assets<LuaScript>>().add(script);
    app.world_mut().spawn(LuaScripts::new(handle));
    for _ in 0..frames {
        app.update();
    }
    let collected = app.world().resource::<Collected>();
    assert!(collected.errors.is_empty(), "unexpected script errors: {:#?}", collected.errors);
    collected.printed.clone()
}

/// What the script printed and the errors it raised.
#[derive(Resource, Default)]
struct Collected {
    printed: Vec<String>,
    errors: Vec<ScriptError>,
}

fn collect(
    mut prints: MessageReader<ScriptPrint>,
    mut errors: MessageReader<ScriptError>,
    mut c: ResMut<Collected>,
) {
    c.printed.extend(prints.read().map(|p| p.line.clone()));
    c.errors.extend(errors.read().cloned());
}

fn external(src: &str, frames: usize) -> Vec<String> {
    output_external(&format!("{FAKE}\n{src}"), frames)
}

#[test]
fn an_external_channel_supports_every_method() {
    let out = external(
        r#"
        local ch, rust = fake(2)
        print(tostring(ch), ch:len(), ch:cap(), ch:isClosed())
        print("conversion error", pcall(function() ch:trySend(print) end))
        print("trySend", ch:trySend("a"), ch:send("b"), ch:trySend("c"), ch:len())
        print("receive", ch:receive())
        print("tryReceive", ch:tryReceive())
        print("empty", ch:tryReceive())
        rust.push("from rust")
        print("select", Channel.select({ { ch, "receive" }, { nil, "default" } }))
        print("select default", Channel.select({ { ch, "receive" }, { nil, "default" } }))
        print("select send", Channel.select({ { ch, "send", "s" }, { nil, "default" } }), rust.pull())
        print("select conversion error", pcall(function() Channel.select({ { ch, "send", print } }) end))
        ch:send(1) ch:send(2)
        ch:close()
        local got = {}
        for v in ch:iter() do got[#got + 1] = v end
        print("iter", table.concat(got, ","), ch:isClosed())
        print("closed", ch:receive())
        print(pcall(ch.send, ch, 1))
        print(pcall(ch.close, ch))
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "Channel(fake)\t0\t2\tfalse",
            "conversion error\tfalse\tcannot convert a function",
            "trySend\ttrue\ttrue\tfalse\t2",
            "receive\ta\ttrue",
            "tryReceive\tb\ttrue",
            "empty\tnil\tfalse",
            "select\t1\tfrom rust\ttrue",
            "select default\t2",
            "select send\t1\ts",
            "select conversion error\tfalse\tcannot convert a function",
            "iter\t1,2\ttrue",
            "closed\tnil\tfalse",
            "false\tsend on closed channel",
            "false\tclose of closed channel",
        ],
        "the Channel methods and select work through ext; ext.send's error reaches the caller"
    );
}

#[test]
fn a_blocked_operation_on_an_external_channel_is_retried_by_poll_at_the_start_of_each_step() {
    let out = external(
        r#"
        local ch, rust = fake(1)
        task.spawn(function() local v, ok = ch:receive() print("r1", v, ok, time.frame()) end)
        task.spawn(function() local v, ok = ch:receive() print("r2", v, ok, time.frame()) end)
        task.delay(0.05, function()
          rust.push("x") rust.push("y")
          print("rust pushed two", time.frame())
        end)
        task.wait(0.1)
        ch:send("fill")
        task.spawn(function() print("sender", ch:send("waits"), time.frame()) end)
        task.spawn(function() print("bad sender", pcall(function() ch:send(print) end)) end)
        print("rust pulls", rust.pull(), time.frame())
        task.wait()
        print("rust pulls", rust.pull(), time.frame())
        task.wait()
        print("len", ch:len())
        "#,
        12,
    );
    assert_eq!(
        out,
        [
            "rust pushed two\t4",
            "r1\tx\ttrue\t5",
            "r2\ty\ttrue\t5",
            "rust pulls\tfill\t7",
            "rust pulls\twaits\t8",
            "sender\ttrue\t8",
            "len\t0",
            "bad sender\tfalse\tcannot convert a function",
        ],
        "receivers wake in the order they parked on the step after Rust made values available (woken \
         tasks run after the frame waits); a parked send's conversion error reaches the sender"
    );
}

#[test]
fn an_external_channel_closing_wakes_its_waiters() {
    let out = external(
        r#"
        local ch, rust = fake(0)
        task.spawn(function() local v, ok = ch:receive() print("receiver", v, ok, time.frame()) end)
        task.spawn(function() print("sender", pcall(ch.send, ch, 1)) end)
        task.wait()
        ch:close() -- from Lua: at once
        print("closed by the script", time.frame())
        task.wait()
        local other, rust2 = fake(0)
        task.spawn(function() local v, ok = other:receive() print("receiver 2", v, ok, time.frame()) end)
        task.wait()
        rust2.close() -- from Rust: at the next poll
        print("closed by rust", time.frame())
        task.wait()
        "#,
        6,
    );
    assert_eq!(
        out,
        [
            "closed by the script\t2",
            "receiver\tnil\tfalse\t2",
            "sender\tfalse\tsend on closed channel",
            "closed by rust\t4",
            "receiver 2\tnil\tfalse\t5",
        ],
        "a close wakes receivers with nil, false and makes senders raise"
    );
}

#[test]
fn select_mixes_external_and_lua_channels_and_completes_one_case() {
    let out = external(
        r#"
        local ext, rust = fake(1)
        local lua = Channel.new()
        task.spawn(function() print("select 1", Channel.select({ { ext, "receive" }, { lua, "receive" } })) end)
        lua:send("from lua")
        task.wait()
        rust.push("for nobody")
        task.wait()
        task.wait()
        print("the ext value stays", ext:len())
        rust.pull()
        task.spawn(function()
          local i, v, ok = Channel.select({ { ext, "receive" }, { lua, "receive" } })
          print("select 2", i, v, ok, time.frame())
        end)
        rust.push("from rust")
        task.wait()
        print("lua has no receiver left", lua:trySend("lost?"), time.frame())
        local ext2 = fake(1)
        task.spawn(function()
          local i, v, ok = Channel.select({ { lua, "receive" }, { ext2, "receive" } })
          print("select 3", i, v, ok, time.frame())
        end)
        ext2:send("sent from lua")
        print("same step", time.frame())
        task.wait()
        "#,
        10,
    );
    assert_eq!(
        out,
        [
            "select 1\t2\tfrom lua\ttrue",
            "the ext value stays\t1",
            "lua has no receiver left\tfalse\t5",
            "same step\t5",
            "select 2\t1\tfrom rust\ttrue\t5",
            "select 3\t2\tsent from lua\ttrue\t5",
        ],
        "a select parked on both kinds is completed once, by whichever proceeds first; \
         a send from Lua retries that channel's waiters at once"
    );
}

#[test]
fn the_constructor_checks_its_arguments() {
    let out = output_external(
        r#"
        local function try(f, ...) local _, e = pcall(f, ...) print(e) end
        try(makeExternal, 5)
        try(makeExternal, { send = print })
        "#,
        1,
    );
    assert_eq!(
        out,
        [
            "bad argument #1 to '_external' (table expected, got number)",
            "bad argument #1 to '_external' (field 'can_send': function expected, got nil)",
        ],
        "a malformed ext is refused with bad argument, not a broken channel"
    );
}
