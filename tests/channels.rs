//! Channels with Go's semantics, one test per rule. The oracle is Go itself: the cases
//! of `runtime/chan_test.go` (TestChan, TestNonblockSelectRace, TestSelfSelect,
//! TestSelectDuplicateChannel, TestPseudoRandomSend, TestMultiConsumer) and the select statement
//! of the Go spec. Stepped frame by frame with a fixed DT (1/60 s: a wait of 0.1 s started on
//! frame 1 ends on frame 7). Channel operations that rendezvous finish within one step.

mod common;
use bevy::prelude::*;
use bevy_lua_coroutines::mlua;
use bevy_lua_coroutines::prelude::*;
use common::*;

/// Runs `src` as one script with `plugin` for `frames` frames, checks it raised nothing, and
/// returns what it printed.
fn output_with(plugin: LuaCoroutinesPlugin, src: &str, frames: usize) -> Vec<String> {
    let mut app = create_app_with(plugin);
    spawn_script(&mut app, "scripts/test.lua", src);
    run(&mut app, frames);
    let errs = errors(&app);
    assert!(errs.is_empty(), "unexpected script errors: {errs:#?}");
    printed(&app)
}

/// Test-only: evaluates `expr` with the VM's own globals and puts the result in the shared base
/// under `name`, so that scripts of different entities can meet on one channel (scripts cannot
/// write the base themselves).
fn share(app: &mut App, name: &str, expr: &str) {
    let lua = app.world().resource::<LuaRuntime>().lua();
    let value: mlua::Value = lua.load(expr).eval().expect("the shared value evaluates");
    share_value(app, name, value);
}

/// Test-only: puts `value` in the shared base under `name`.
fn share_value(app: &mut App, name: &str, value: mlua::Value) {
    let lua = app.world().resource::<LuaRuntime>().lua();
    let base = lua.globals().metatable().expect("the base is a read-only view");
    let store: mlua::Table = base.get("__index").expect("the view reads through to the store");
    store.raw_set(name, value).expect("the store takes the shared value");
}

// ---------------------------------------------------------------------------------------------
// Unbuffered, buffered, unbounded

#[test]
fn unbuffered_send_and_receive_rendezvous_in_the_same_step() {
    let out = output(
        r#"
        local ch = Channel.new()
        print("cap", ch:cap(), "len", ch:len())
        task.spawn(function()
          local v, ok = ch:receive()
          print("receiver got", v, ok, time.frame())
        end)
        ch:send("a")
        print("send to a waiting receiver did not yield", time.frame())
        local sent = false
        task.spawn(function()
          ch:send("b")
          sent = true
          print("sender resumed", time.frame())
        end)
        print("sender waits for a receiver", sent)
        task.wait()
        print("still waiting on the next frame", sent, time.frame())
        print("receive", ch:receive())
        print("receive from a waiting sender did not yield", sent, time.frame())
        "#,
        3,
    );
    assert_eq!(
        out,
        [
            "cap\t0\tlen\t0",
            "send to a waiting receiver did not yield\t1",
            "sender waits for a receiver\tfalse",
            "receiver got\ta\ttrue\t1",
            "still waiting on the next frame\tfalse\t2",
            "receive\tb\ttrue",
            "receive from a waiting sender did not yield\tfalse\t2",
            "sender resumed\t2",
        ],
        "a send waits for a receiver and vice versa; the one that waited resumes later in the same step"
    );
}

#[test]
fn receive_from_empty_and_send_to_full_block_and_their_try_forms_do_not() {
    // TestChan: "receive from empty chan blocks", "non-blocking receive does not block", "send to
    // full chan blocks", "non-blocking send does not block", for several capacities.
    let out = output(
        r#"
        for _, cap in ipairs({ 0, 1, 5 }) do
          local c = Channel.new(cap)
          local recv1, recv2 = false, false
          task.spawn(function() c:receive() recv1 = true end)
          task.spawn(function() local _, _ = c:receive() recv2 = true end)
          task.wait()
          local v, ok = c:tryReceive()
          local i = Channel.select({ { c, "receive" }, { nil, "default" } })
          print(cap, "empty", recv1, recv2, v, ok, i)
          c:send(0)
          c:send(0)
          task.wait()
          print(cap, "received", recv1, recv2)

          local f = Channel.new(cap)
          for k = 1, cap do f:send(k) end
          local sent = false
          task.spawn(function() f:send(0) sent = true end)
          task.wait()
          print(cap, "full", sent, f:trySend(0), Channel.select({ { f, "send", 0 }, { nil, "default" } }), f:len())
          f:receive()
          task.wait()
          print(cap, "after one receive", sent, f:len())
        end
        "#,
        15,
    );
    assert_eq!(
        out,
        [
            "0\tempty\tfalse\tfalse\tnil\tfalse\t2",
            "0\treceived\ttrue\ttrue",
            "0\tfull\tfalse\tfalse\t2\t0",
            "0\tafter one receive\ttrue\t0",
            "1\tempty\tfalse\tfalse\tnil\tfalse\t2",
            "1\treceived\ttrue\ttrue",
            "1\tfull\tfalse\tfalse\t2\t1",
            "1\tafter one receive\ttrue\t1",
            "5\tempty\tfalse\tfalse\tnil\tfalse\t2",
            "5\treceived\ttrue\ttrue",
            "5\tfull\tfalse\tfalse\t2\t5",
            "5\tafter one receive\ttrue\t5",
        ],
        "blocked operations wait across frames; trySend, tryReceive and a select with default do not; \
         a receive from a full buffer moves the waiting sender's value in"
    );
}

#[test]
fn values_arrive_in_fifo_order_and_each_exactly_once_with_many_senders_and_receivers() {
    // TestChan: "Send 100 integers, ensure that we receive them non-corrupted in FIFO order", and
    // "Send 1000 integers in 4 goroutines, ensure that we receive what we send".
    let out = output(
        r#"
        for _, cap in ipairs({ 0, 1, 5, 100, math.huge }) do
          local c = Channel.new(cap)
          task.spawn(function() for i = 0, 99 do c:send(i) end end)
          local wrong = 0
          for i = 0, 99 do
            local v, ok = c:receive()
            if v ~= i or ok ~= true then wrong = wrong + 1 end
          end
          local P, L = 4, 250
          for _ = 1, P do task.spawn(function() for i = 1, L do c:send(i) end end) end
          local done = Channel.new()
          for _ = 1, P do
            task.spawn(function()
              local recv = {}
              for _ = 1, L do
                local v = c:receive()
                recv[v] = (recv[v] or 0) + 1
              end
              done:send(recv)
            end)
          end
          local total = {}
          for _ = 1, P do
            for k, n in pairs(done:receive()) do total[k] = (total[k] or 0) + n end
          end
          local distinct, miscounted = 0, 0
          for _, n in pairs(total) do
            distinct = distinct + 1
            if n ~= P then miscounted = miscounted + 1 end
          end
          print(cap, "out of order", wrong, "distinct", distinct, "miscounted", miscounted, "frame", time.frame(), "len", c:len())
        end
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "0\tout of order\t0\tdistinct\t250\tmiscounted\t0\tframe\t1\tlen\t0",
            "1\tout of order\t0\tdistinct\t250\tmiscounted\t0\tframe\t1\tlen\t0",
            "5\tout of order\t0\tdistinct\t250\tmiscounted\t0\tframe\t1\tlen\t0",
            "100\tout of order\t0\tdistinct\t250\tmiscounted\t0\tframe\t1\tlen\t0",
            "inf\tout of order\t0\tdistinct\t250\tmiscounted\t0\tframe\t1\tlen\t0",
        ],
        "FIFO for one sender; every value received exactly P times with P senders and P receivers; \
         rendezvous never need another frame"
    );
}

#[test]
fn nil_values_are_sent_and_survive_buffers() {
    let out = output(
        r#"
        local c = Channel.new(3)
        c:send(nil)
        c:send(false)
        c:send(nil)
        print("len", c:len(), "full", c:trySend(1))
        print(c:receive())
        print(c:receive())
        print(c:receive())
        print(c:tryReceive())
        local u = Channel.new()
        task.spawn(function() u:send() end)
        print(u:receive())
        local big = Channel.new(math.huge)
        for i = 1, 5 do big:send(i % 2 == 0 and i or nil) end
        local got = {}
        for i = 1, 5 do got[i] = tostring((big:receive())) end
        print(table.concat(got, ","), big:len())
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "len\t3\tfull\tfalse",
            "nil\ttrue",
            "false\ttrue",
            "nil\ttrue",
            "nil\tfalse",
            "nil\ttrue",
            "nil,2,nil,4,nil\t0"
        ],
        "nil is a value like any other (Go sends zero values): it is counted, buffered and received with ok"
    );
}

#[test]
fn an_unbounded_channel_never_blocks_a_sender() {
    let out = output(
        r#"
        local c = Channel.new(math.huge)
        for i = 1, 10000 do c:send(i) end
        print("len", c:len(), "cap is huge", c:cap() == math.huge, "frame", time.frame())
        local ok = 0
        for i = 1, 10000 do if c:receive() == i then ok = ok + 1 end end
        print("in order", ok, "len", c:len(), "frame", time.frame())
        print(c:tryReceive())
        "#,
        2,
    );
    assert_eq!(
        out,
        ["len\t10000\tcap is huge\ttrue\tframe\t1", "in order\t10000\tlen\t0\tframe\t1", "nil\tfalse"],
        "math.huge capacity: sends never wait, values come out in order"
    );
}

// ---------------------------------------------------------------------------------------------
// Close

#[test]
fn a_closed_channel_drains_its_buffer_then_returns_nil_false() {
    // TestChan: "Ensure that we receive 0 from closed chan" and "Ensure that close unblocks receive".
    let out = output(
        r#"
        for _, cap in ipairs({ 0, 3 }) do
          local c = Channel.new(cap)
          for i = 1, cap do c:send(i) end
          c:close()
          local got = {}
          for i = 1, cap do local v, ok = c:receive() got[#got + 1] = tostring(v) .. ":" .. tostring(ok) end
          local v1, ok1 = c:receive()
          local v2, ok2 = c:tryReceive()
          print(cap, table.concat(got, " "), v1, ok1, v2, ok2, c:isClosed(), c:len())

          local d = Channel.new(cap)
          local results = {}
          for r = 1, 2 do
            task.spawn(function()
              local v, ok = d:receive()
              results[#results + 1] = string.format("r%d %s %s frame %d", r, tostring(v), tostring(ok), time.frame())
            end)
          end
          task.wait()
          print(cap, "waiting receivers", #results)
          d:close()
          task.wait(0) -- the receivers resume in this step, after this yield
          print(cap, table.concat(results, "; "))
        end
        "#,
        8,
    );
    assert_eq!(
        out,
        [
            "0\t\tnil\tfalse\tnil\tfalse\ttrue\t0",
            "0\twaiting receivers\t0",
            "0\tr1 nil false frame 2; r2 nil false frame 2",
            "3\t1:true 2:true 3:true\tnil\tfalse\tnil\tfalse\ttrue\t0",
            "3\twaiting receivers\t0",
            "3\tr1 nil false frame 4; r2 nil false frame 4",
        ],
        "buffered values first, then nil, false forever; close wakes every waiting receiver with nil, false"
    );
}

#[test]
fn sending_on_or_closing_a_closed_channel_raises_and_so_does_a_waiting_sender() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/test.lua",
        r#"
        local c = Channel.new(1)
        c:close()
        print(pcall(function() c:send(1) end))
        print(pcall(function() c:trySend(1) end))
        print(pcall(function() c:close() end))
        print(pcall(function() local _ = Channel.select({ { c, "send", 1 }, { nil, "default" } }) end))

        local u = Channel.new()
        task.spawn(function()
          print("caught", pcall(function() u:send("x") end))
        end)
        task.spawn(function()
          u:send("y") -- not caught: the task fails with this line
          print("never")
        end)
        task.spawn(function()
          print("select caught", pcall(function() local _ = Channel.select({ { u, "send", "z" }, { nil, "receive" } }) end))
        end)
        print("closing", time.frame())
        u:close()
        print("closed", u:isClosed(), u:tryReceive())
        "#,
    );
    run(&mut app, 2);
    assert_eq!(
        printed(&app),
        [
            "false\tscripts/test.lua:4: send on closed channel",
            "false\tscripts/test.lua:5: send on closed channel",
            "false\tscripts/test.lua:6: close of closed channel",
            "false\tscripts/test.lua:7: send on closed channel",
            "closing\t1",
            "closed\ttrue\tnil\tfalse",
            "caught\tfalse\tscripts/test.lua:11: send on closed channel",
            "select caught\tfalse\tscripts/test.lua:18: send on closed channel",
        ],
        "Go panics become errors at the caller's line; a sender waiting when the channel closes raises"
    );
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "the uncaught send failed its task: {errs:#?}");
    assert_eq!(errs[0].message, "scripts/test.lua:14: send on closed channel", "at the line of the send");
}

// ---------------------------------------------------------------------------------------------
// trySend, tryReceive, iter, len, cap, isClosed

#[test]
fn try_send_and_try_receive_only_take_what_is_there_now() {
    let out = output(
        r#"
        local c = Channel.new()
        print("no receiver", c:trySend(1), "no sender", c:tryReceive())
        task.spawn(function() print("receiver got", c:receive()) end)
        print("to the waiting receiver", c:trySend(2), "and again", c:trySend(3))
        task.spawn(function() c:send(4) print("sender done") end)
        print("from the waiting sender", c:tryReceive())
        print("nothing left", c:tryReceive())
        local b = Channel.new(2)
        print(b:trySend("x"), b:trySend("y"), b:trySend("z"), b:len())
        print(b:tryReceive())
        print(b:tryReceive())
        print(b:tryReceive())
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "no receiver\tfalse\tno sender\tnil\tfalse",
            "to the waiting receiver\ttrue\tand again\tfalse",
            "from the waiting sender\t4\ttrue",
            "nothing left\tnil\tfalse",
            "true\ttrue\tfalse\t2",
            "x\ttrue",
            "y\ttrue",
            "nil\tfalse",
            "receiver got\t2\ttrue",
            "sender done",
        ],
        "a try form hands off to a waiting partner or uses the buffer, else fails at once"
    );
}

#[test]
fn iter_receives_until_the_channel_is_closed_and_drained() {
    let out = output(
        r#"
        local c = Channel.new(2)
        task.spawn(function()
          for i = 1, 5 do
            c:send(i)
            if i == 3 then c:send(nil) end -- received, and skipped by the for loop
            task.wait()
          end
          c:close()
        end)
        local got = {}
        for v in c:iter() do got[#got + 1] = v end
        print(table.concat(got, ","), "frame", time.frame(), c:isClosed())
        for v in c:iter() do print("never", v) end
        print("a closed, drained channel ends the loop at once")
        "#,
        8,
    );
    assert_eq!(
        out,
        ["1,2,3,4,5\tframe\t6\ttrue", "a closed, drained channel ends the loop at once"],
        "for v in ch:iter() runs until closed and drained"
    );
}

#[test]
fn len_cap_and_is_closed_report_the_buffer() {
    // TestChan: "Test len/cap".
    let out = output(
        r#"
        for _, cap in ipairs({ 0, 1, 7, math.huge }) do
          local c = Channel.new(cap)
          local l0, c0 = c:len(), c:cap()
          local n = cap == math.huge and 9 or cap
          for i = 1, n do c:send(i) end
          local l1 = c:len()
          c:tryReceive()
          local closed0 = c:isClosed()
          c:close()
          print(cap, l0, c0, l1, c:len(), closed0, c:isClosed())
        end
        print(Channel.new():cap(), Channel.new(nil):cap(), Channel.new(3.0):cap())
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "0\t0\t0\t0\t0\tfalse\ttrue",
            "1\t0\t1\t1\t0\tfalse\ttrue",
            "7\t0\t7\t7\t6\tfalse\ttrue",
            "inf\t0\tinf\t9\t8\tfalse\ttrue",
            "0\t0\t3",
        ],
        "len counts buffered values, cap is the capacity, isClosed follows close"
    );
}

#[test]
fn a_buffer_used_in_place_keeps_order_and_hands_a_full_buffer_to_a_waiting_sender() {
    // `send` and `receive` take a short path while nobody waits; once a sender waits on a full
    // buffer, a receive refills the buffer from it, in order.
    let out = output(
        r#"
        local c = Channel.new(4)
        local got, want = {}, 0
        for round = 1, 300 do
          for i = 1, round % 4 + 1 do want = want + 1; c:send(want) end
          while c:len() > round % 2 do got[#got + 1] = c:receive() end
        end
        while c:len() > 0 do got[#got + 1] = c:receive() end
        local inorder = #got == want
        for i = 1, #got do if got[i] ~= i then inorder = false end end
        print(want, inorder, c:len())
        for i = 1, 4 do c:send(i) end
        task.spawn(function() c:send(5) print("sender done") end)
        print("buffer full", c:len())
        local all = {}
        for i = 1, 5 do all[i] = c:receive() end
        print(table.concat(all, " "), c:len())
        "#,
        3,
    );
    // The woken sender runs after the receiving task yields.
    assert_eq!(out, ["750\ttrue\t0", "buffer full\t4", "1 2 3 4 5\t0", "sender done"]);
}

#[test]
fn a_finished_wait_keeps_nothing_it_carried_alive() {
    // A finished wait's waiter is kept for the next wait; the value it carried (a waiting
    // sender's, or what a waiting receiver got) must not stay reachable through it.
    let out = output(
        r#"
        local c = Channel.new()
        local weak = setmetatable({}, { __mode = "v" })
        task.spawn(function() local t = {}; weak[1] = t; c:send(t) end) -- waits with t
        local got = c:receive()
        task.spawn(function() local t = c:receive(); weak[2] = t end) -- waits, then gets one
        c:send({})
        got = nil
        task.wait()
        collectgarbage()
        collectgarbage()
        print(weak[1] == nil, weak[2] == nil)
        "#,
        5,
    );
    assert_eq!(out, ["true\ttrue"]);
}

#[test]
fn a_buffer_drained_from_far_along_starts_over_in_order() {
    // Draining a buffer whose head went past 64 gives it a fresh table; values sent after that
    // still come out in order, and the length reads right throughout.
    let out = output(
        r#"
        local c = Channel.new(100)
        local ok = true
        for round = 1, 3 do
          for i = 1, 80 do c:send(round * 1000 + i) end
          for i = 1, 80 do if c:receive() ~= round * 1000 + i then ok = false end end
          if c:len() ~= 0 then ok = false end
        end
        c:send("a") c:send("b")
        print(ok, c:receive(), c:len(), c:receive(), c:len())
        "#,
        2,
    );
    assert_eq!(out, ["true\ta\t1\tb\t0"]);
}

// ---------------------------------------------------------------------------------------------
// Select

#[test]
fn select_takes_a_ready_case_or_the_default_at_once() {
    // TestNonblockSelectRace(2): a channel that is ready keeps select from taking the default.
    let out = output(
        r#"
        local c1, c2 = Channel.new(1), Channel.new(1)
        print("nothing ready", Channel.select({ { c1, "receive" }, { c2, "receive" }, { nil, "default" } }))
        c1:send("one")
        print("c1 ready", Channel.select({ { c1, "receive" }, { c2, "receive" }, { nil, "default" } }))
        local u = Channel.new()
        u:close()
        print("closed is ready", Channel.select({ { Channel.new(), "receive" }, { u, "receive" }, { nil, "default" } }))
        print("send to room", Channel.select({ { c2, "send", "two" }, { nil, "default" } }), c2:len())
        print("send to full", Channel.select({ { c2, "send", "three" }, { nil, "default" } }), c2:len())
        print("receive it", Channel.select({ { nil, "default" }, { c2, "receive" } }))
        local defaults = 0
        for i = 1, 200 do
          local a, b = Channel.new(1), Channel.new()
          a:send(i)
          b:close()
          if Channel.select({ { a, "receive" }, { b, "receive" }, { nil, "default" } }) == 3 then defaults = defaults + 1 end
        end
        print("defaults taken while a case was ready", defaults)
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "nothing ready\t3",
            "c1 ready\t1\tone\ttrue",
            "closed is ready\t2\tnil\tfalse",
            "send to room\t1\t1",
            "send to full\t2\t1",
            "receive it\t2\ttwo\ttrue",
            "defaults taken while a case was ready\t0",
        ],
        "a receive case returns index, value, ok; a send case and the default return the index"
    );
}

#[test]
fn select_blocks_until_a_case_can_proceed_and_completes_exactly_one() {
    let out = output(
        r#"
        -- Blocks until one case proceeds; the other case stops waiting.
        local a, b = Channel.new(), Channel.new()
        task.spawn(function()
          print("select ->", Channel.select({ { a, "receive" }, { b, "send", "for b" } }))
        end)
        print("b receives", b:receive())
        print("a no longer has a receiver", a:trySend("lost?"))
        task.wait()

        -- Never takes two values: both channels become ready while it waits.
        local c, d = Channel.new(1), Channel.new(1)
        task.spawn(function()
          print("select ->", Channel.select({ { c, "receive" }, { d, "receive" } }))
        end)
        c:send(1)
        d:send(2)
        print("d kept its value", d:len(), d:tryReceive())
        task.wait()

        -- Unbuffered: only one of two senders is taken.
        local e, f = Channel.new(), Channel.new()
        task.spawn(function()
          print("select ->", Channel.select({ { e, "receive" }, { f, "receive" } }))
        end)
        print("trySend e, f", e:trySend("e"), f:trySend("f"))
        task.wait()

        -- A waiting select's sent value is taken once, from one channel only.
        local g, h = Channel.new(), Channel.new()
        task.spawn(function()
          print("select ->", Channel.select({ { g, "send", "x" }, { h, "send", "y" } }))
        end)
        print("g gets", g:tryReceive())
        print("h gets", h:tryReceive())
        task.wait()
        "#,
        6,
    );
    assert_eq!(
        out,
        [
            "b receives\tfor b\ttrue",
            "a no longer has a receiver\tfalse",
            "select ->\t2",
            "d kept its value\t1\t2\ttrue",
            "select ->\t1\t1\ttrue",
            "trySend e, f\ttrue\tfalse",
            "select ->\t1\te\ttrue",
            "g gets\tx\ttrue",
            "h gets\tnil\tfalse",
            "select ->\t1",
        ],
        "a waiting select is withdrawn from every channel once one case completes"
    );
}

#[test]
fn select_queued_twice_on_one_channel_leaves_the_queue_intact() {
    // TestSelectDuplicateChannel: A waits on c twice and on d; B waits on c; d wakes A, which must
    // leave c's queue so that the next send on c reaches B.
    let out = output(
        r#"
        local c, d, e = Channel.new(), Channel.new(), Channel.new()
        task.spawn(function()
          local i, v = Channel.select({ { c, "receive" }, { c, "receive" }, { d, "receive" } })
          print("A", i, v)
          e:send(9)
        end)
        task.spawn(function() print("B", c:receive()) end)
        d:send(7)
        print("A told us", e:receive())
        c:send(8)
        task.wait()
        "#,
        2,
    );
    assert_eq!(out, ["A\t3\t7", "A told us\t9\ttrue", "B\t8\ttrue"], "c's queue keeps B after A left it");
}

#[test]
fn select_never_receives_its_own_send() {
    // TestSelfSelect: two tasks select between sending and receiving on one channel; they pair up
    // without deadlock, and on an unbuffered channel no task receives its own value.
    let out = output(
        r#"
        for _, cap in ipairs({ 0, 10 }) do
          local c = Channel.new(cap)
          local done, self_receives = Channel.new(), 0
          for p = 0, 1 do
            task.spawn(function()
              for i = 1, 1000 do
                local k, v
                if p == 0 or i % 2 == 0 then
                  k, v = Channel.select({ { c, "send", p }, { c, "receive" } })
                else
                  k, v = Channel.select({ { c, "receive" }, { c, "send", p } })
                end
                if cap == 0 and v == p then self_receives = self_receives + 1 end
              end
              done:send(p)
            end)
          end
          done:receive()
          done:receive()
          print(cap, "finished, self receives", self_receives)
        end
        "#,
        3,
    );
    assert_eq!(
        out,
        ["0\tfinished, self receives\t0", "10\tfinished, self receives\t0"],
        "both tasks finish their 1000 selects"
    );
}

#[test]
fn a_case_with_a_nil_channel_is_never_ready() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/test.lua",
        r#"
        print("only nil cases and a default", Channel.select({ { nil, "receive" }, { nil, "send", 1 }, { nil, "default" } }))
        local c = Channel.new()
        task.delay(0.05, function() c:send("late") end)
        print("nil and a channel", Channel.select({ { nil, "receive" }, { c, "receive" }, { nil, "send", 2 } }))
        print("at frame", time.frame())
        task.spawn(function() Channel.select({ { nil, "receive" } }) print("never") end)
        task.spawn(function() Channel.select({}) print("never") end)
        print("two tasks wait forever")
        "#,
    );
    run(&mut app, 30);
    assert_eq!(
        printed(&app),
        [
            "only nil cases and a default\t3",
            "nil and a channel\t2\tlate\ttrue",
            "at frame\t4",
            "two tasks wait forever"
        ],
        "a nil channel never proceeds; a select with nothing else blocks forever (like Go's select {{}})"
    );
    assert!(errors(&app).is_empty(), "no errors: {:#?}", errors(&app));
    assert_eq!(live_tasks(&app), 2, "the two selects on nil channels still wait");
}

#[test]
fn after_delivers_the_elapsed_game_seconds_once_and_times_out_a_select() {
    let out = output(
        r#"
        local work = Channel.new()
        task.delay(0.5, function() work:trySend("too late") end)
        local t = Channel.after(0.1)
        print("after", t:cap(), t:len())
        local i, v, ok = Channel.select({ { work, "receive" }, { t, "receive" } })
        print("timed out", i, v >= 0.1, ok, time.frame())
        print("only once", t:tryReceive())
        local quick = Channel.new()
        task.delay(0.05, function() quick:send("in time") end)
        print("in time", Channel.select({ { quick, "receive" }, { Channel.after(0.1), "receive" } }))
        print("at frame", time.frame())
        print("after(0) is the next frame", Channel.after(0):receive() > 0, time.frame())
        "#,
        20,
    );
    assert_eq!(
        out,
        [
            "after\t1\t0",
            "timed out\t2\ttrue\ttrue\t7",
            "only once\tnil\tfalse",
            "in time\t1\tin time\ttrue",
            "at frame\t10",
            "after(0) is the next frame\ttrue\t11",
        ],
        "Channel.after is the timeout case of a select, on game time"
    );
}

// ---------------------------------------------------------------------------------------------
// Fairness and the seed

const FAIRNESS: &str = r#"
    local a, b, c = Channel.new(1), Channel.new(1), Channel.new(1)
    local counts, seq = { 0, 0, 0 }, {}
    for n = 1, 3000 do
      a:trySend(1) b:trySend(1) c:trySend(1)
      local i = Channel.select({ { a, "receive" }, { b, "receive" }, { c, "receive" } })
      counts[i] = counts[i] + 1
      if n <= 40 then seq[#seq + 1] = i end
    end
    print(counts[1], counts[2], counts[3])
    print(table.concat(seq))
    -- TestPseudoRandomSend: two send cases on one channel.
    local ch, ones = Channel.new(100), 0
    for _ = 1, 100 do Channel.select({ { ch, "send", 1 }, { ch, "send", 0 } }) end
    for _ = 1, 100 do ones = ones + ch:receive() end
    print(ones)
"#;

fn fairness(seed: Option<u64>, prelude: &str) -> (Vec<u32>, String, u32) {
    let plugin = match seed {
        Some(select_seed) => LuaCoroutinesPlugin { print_to_stdout: false, select_seed, ..default() },
        None => LuaCoroutinesPlugin { print_to_stdout: false, ..default() },
    };
    let out = output_with(plugin, &format!("{prelude}\n{FAIRNESS}"), 2);
    assert_eq!(out.len(), 3, "three lines: {out:?}");
    let counts = out[0].split('\t').map(|n| n.parse().expect("a count")).collect();
    (counts, out[1].clone(), out[2].parse().expect("a count"))
}

#[test]
fn select_picks_uniformly_among_ready_cases_and_the_seed_replays_the_choices() {
    let (counts, seq, ones) = fairness(None, "");
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            (900..=1100).contains(&n),
            "case {} chosen {n} times of 3000 (about 1000 expected): {counts:?}",
            i + 1
        );
    }
    assert!((25..=75).contains(&ones), "two send cases: {ones} ones of 100 (about 50 expected)");
    assert!(seq.contains('1') && seq.contains('2') && seq.contains('3'), "every case appears early: {seq}");

    let again = fairness(None, "");
    assert_eq!(again, (counts.clone(), seq.clone(), ones), "the same (default) seed replays every choice");
    let explicit = fairness(Some(0x5EED), "");
    assert_eq!(explicit.1, seq, "the default seed is 0x5EED");
    let reseeded = fairness(None, "math.randomseed(12345)");
    assert_eq!(reseeded.1, seq, "math.randomseed does not touch the select generator");
    let other = fairness(Some(7), "");
    assert_ne!(other.1, seq, "a different seed gives a different sequence");
    assert_eq!(fairness(Some(7), "").1, other.1, "seed 7 replays too");
}

/// Go's `TestPseudoRandomSend` on an unbuffered channel: each select blocks on two send cases of
/// one channel, and the receiver comes a frame later. Returns the values received, in order.
fn blocked_sends(seed: u64) -> String {
    let plugin = LuaCoroutinesPlugin { print_to_stdout: false, select_seed: seed, ..default() };
    let out = output_with(
        plugin,
        r#"
        local ch, got = Channel.new(), {}
        task.spawn(function()
          for i = 1, 60 do
            task.wait()                                   -- the select is waiting by now
            got[i] = ch:receive()
          end
          print(table.concat(got))
        end)
        for _ = 1, 60 do
          assert(Channel.select({ { ch, "send", 1 }, { ch, "send", 0 } }))
        end
        "#,
        70,
    );
    assert_eq!(out.len(), 1, "{out:?}");
    out[0].clone()
}

#[test]
fn a_select_blocked_on_sends_to_one_channel_is_taken_at_random_and_replays() {
    let got = blocked_sends(0x5EED);
    let ones = got.chars().filter(|&c| c == '1').count();
    assert!((15..=45).contains(&ones), "each blocked case is as likely to be taken: {got}");
    assert_eq!(blocked_sends(0x5EED), got, "the same seed replays the choices");
    assert_ne!(blocked_sends(7), got, "another seed, other choices");
}

// ---------------------------------------------------------------------------------------------
// The seed's producer/consumer example

#[test]
fn one_producer_three_consumers_every_value_delivered_exactly_once() {
    // TestMultiConsumer, scaled down: workers range over a job channel, report on a result channel.
    let out = output(
        r#"
        local jobs, results = Channel.new(), Channel.new(math.huge)
        local finished = Channel.new(3)
        for w = 1, 3 do
          task.spawn(function()
            local n = 0
            for job in jobs:iter() do
              task.wait() -- a frame of work
              results:send(job * 10 + w)
              n = n + 1
            end
            finished:send(n)
          end)
        end
        task.spawn(function()
          for j = 1, 30 do jobs:send(j) end
          jobs:close()
        end)
        local per_worker = { 0, 0, 0 }
        for _ = 1, 3 do finished:receive() end
        local seen, dup, sum = {}, 0, 0
        while results:len() > 0 do
          local r = results:receive()
          local job, w = math.floor(r / 10), r % 10
          if seen[job] then dup = dup + 1 end
          seen[job] = true
          per_worker[w] = per_worker[w] + 1
          sum = sum + job
        end
        local missing = 0
        for j = 1, 30 do if not seen[j] then missing = missing + 1 end end
        print("missing", missing, "duplicates", dup, "sum", sum)
        print("per worker", per_worker[1], per_worker[2], per_worker[3], "frame", time.frame())
        "#,
        20,
    );
    assert_eq!(
        out,
        ["missing\t0\tduplicates\t0\tsum\t465", "per worker\t10\t10\t10\tframe\t11"],
        "30 jobs, each delivered once; FIFO receivers share the work evenly"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation and despawn

#[test]
fn a_cancelled_waiter_loses_no_value() {
    let out = output(
        r#"
        local c = Channel.new()
        local r1 = task.spawn(function() print("r1 got", c:receive()) end)
        task.spawn(function() print("r2 got", c:receive()) end)
        task.cancel(r1)
        c:send("v1")
        local s1 = task.spawn(function() c:send("from the cancelled sender") print("never") end)
        task.cancel(s1)
        print("after the cancelled sender", c:tryReceive())
        task.spawn(function() c:send("from the live sender") end)
        print("receive", c:receive())
        local sel = task.spawn(function() Channel.select({ { c, "receive" }, { c, "send", "sel" } }) print("never") end)
        task.cancel(sel)
        print("after the cancelled select", c:trySend("x"), c:tryReceive())
        local b = Channel.new(1)
        b:send("kept")
        local s2 = task.spawn(function() b:send("never delivered") end)
        task.cancel(s2)
        print("buffered", b:receive())
        print("the cancelled sender's value", b:tryReceive())
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "after the cancelled sender\tnil\tfalse",
            "receive\tfrom the live sender\ttrue",
            "after the cancelled select\tfalse\tnil\tfalse",
            "buffered\tkept\ttrue",
            "the cancelled sender's value\tnil\tfalse",
            "r2 got\tv1\ttrue",
        ],
        "a cancelled receiver is skipped (the next one gets the value); a cancelled sender's value is never delivered"
    );
}

#[test]
fn despawning_a_waiting_script_loses_no_value_and_raises_nothing() {
    let mut app = create_app();
    share(&mut app, "shared", "return Channel.new()");
    share(&mut app, "replies", "return Channel.new()");
    let a = spawn_script(&mut app, "scripts/a.lua", r#"print("A waits") print("A got", shared:receive())"#);
    spawn_script(&mut app, "scripts/b.lua", r#"print("B waits") print("B got", shared:receive())"#);
    let s =
        spawn_script(&mut app, "scripts/s.lua", r#"print("S sends") replies:send("from S") print("S done")"#);
    run(&mut app, 2);
    assert_eq!(take_printed(&mut app), ["A waits", "B waits", "S sends"], "all three wait");
    app.world_mut().despawn(a);
    app.world_mut().despawn(s);
    spawn_script(
        &mut app,
        "scripts/c.lua",
        r#"
        shared:send("only")
        print("C sent", time.frame())
        print("C: the despawned sender's value", replies:tryReceive())
        "#,
    );
    run(&mut app, 3);
    assert_eq!(
        take_printed(&mut app),
        ["C sent\t3", "C: the despawned sender's value\tnil\tfalse", "B got\tonly\ttrue"],
        "the despawned receiver is skipped: B gets the value; the despawned sender's value is gone with it"
    );
    assert!(errors(&app).is_empty(), "despawning a waiting script raises nothing: {:#?}", errors(&app));
}

#[test]
fn a_script_coroutine_waits_on_a_channel_and_a_hand_resume_does_not_lose_its_place() {
    let out = output(
        r#"
        local c = Channel.new()
        local co = coroutine.create(function()
          local v, ok = c:receive()
          print("co got", v, ok, time.frame())
        end)
        coroutine.resume(co)
        print("parked", coroutine.status(co))
        coroutine.resume(co) -- by hand: the receive waits again
        print("still parked", coroutine.status(co), c:len())
        print("send", c:trySend("x"), c:trySend("y"))
        task.wait()
        print(coroutine.status(co))

        local sender = coroutine.wrap(function() print("sent", c:send("s"), time.frame()) end)
        sender()
        sender() -- by hand: the send is not done, it waits again
        print("receive", c:receive())
        print("nothing more", c:tryReceive())
        task.wait()

        local d = Channel.new()
        local selector = coroutine.create(function()
          local i, v, ok = Channel.select({ { c, "receive" }, { d, "send", "sd" } })
          print("select", i, v, ok, time.frame())
        end)
        coroutine.resume(selector)
        coroutine.resume(selector)
        print("d receives", d:receive())
        print("c has no receiver", c:trySend("lost?"))
        task.wait()
        "#,
        5,
    );
    assert_eq!(
        out,
        [
            "parked\tsuspended",
            "still parked\tsuspended\t0",
            "send\ttrue\tfalse",
            "co got\tx\ttrue\t1",
            "dead",
            "receive\ts\ttrue",
            "nothing more\tnil\tfalse",
            "sent\ttrue\t2",
            "d receives\tsd\ttrue",
            "c has no receiver\tfalse",
            "select\t2\tnil\tnil\t3",
        ],
        "a coroutine the script made waits like a task; resuming it early neither completes nor repeats \
         its send, receive or select"
    );
}

#[test]
fn a_select_loop_leaves_nothing_behind_on_the_channels_it_did_not_use() {
    // A select that completes on one channel withdraws from the others at once. Each select here
    // offers a fresh token on a quiet channel; once the loop is over, no waiter still holds one.
    let out = output(
        r#"
        local busy, quiet = Channel.new(), Channel.new()
        task.spawn(function() for i = 1, 1000000 do busy:send(i) end end)
        local held = setmetatable({}, { __mode = "k" })
        for _ = 1, 2000 do
          local token = {}
          held[token] = true
          Channel.select({ { busy, "receive" }, { quiet, "send", token } })
        end
        task.wait()
        collectgarbage("collect")
        local n = 0
        for _ in pairs(held) do n = n + 1 end
        print("tokens still held", n, "quiet has no sender", quiet:tryReceive())
        "#,
        3,
    );
    assert_eq!(
        out,
        ["tokens still held\t0\tquiet has no sender\tnil\tfalse"],
        "no waiter node of a completed select stays queued on another channel"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad arguments

#[test]
fn bad_arguments_raise_bad_argument() {
    let out = output(
        r#"
        local function try(f, ...) local _, e = pcall(f, ...) print(e) end
        local c = Channel.new()
        try(Channel.new, "3")
        try(Channel.new, -1)
        try(Channel.new, 1.5)
        try(Channel.new, 0 / 0)
        try(Channel.new, -math.huge)
        try(Channel.after, "soon")
        try(Channel.select, 5)
        try(Channel.select, { 5 })
        try(Channel.select, { { c, "peek" } })
        try(Channel.select, { { c } })
        try(Channel.select, { { 5, "receive" } })
        try(Channel.select, { { c, "default" } })
        try(Channel.select, { { nil, "default" }, { nil, "default" } })
        try(c.send, 5, 1)
        try(c.receive, {})
        print("hidden from scripts:", Channel._external)
        print(pcall(function() Channel.new(-2) end))
        print(pcall(function() c.len() end))
        print(pcall(function() c.foo = 1 end))
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "bad argument #1 to 'new' (number expected, got string)",
            "bad argument #1 to 'new' (non-negative integer or math.huge expected, got -1)",
            "bad argument #1 to 'new' (non-negative integer or math.huge expected, got 1.5)",
            &format!(
                "bad argument #1 to 'new' (non-negative integer or math.huge expected, got {})",
                nan_text()
            ),
            "bad argument #1 to 'new' (non-negative integer or math.huge expected, got -inf)",
            "bad argument #1 to 'after' (number expected, got string)",
            "bad argument #1 to 'select' (table expected, got number)",
            "bad argument #1 to 'select' (case 1: table expected, got number)",
            "bad argument #1 to 'select' (case 1: 'receive', 'send' or 'default' expected, got 'peek')",
            "bad argument #1 to 'select' (case 1: 'receive', 'send' or 'default' expected, got nil)",
            "bad argument #1 to 'select' (case 1: Channel or nil expected, got number)",
            "bad argument #1 to 'select' (case 1: a default case takes no channel)",
            "bad argument #1 to 'select' (case 2: more than one default case)",
            "calling 'send' on bad self (Channel expected, got number)",
            "calling 'receive' on bad self (Channel expected, got table)",
            "hidden from scripts:\tnil",
            "false\tscripts/test.lua:20: bad argument #1 to 'new' (non-negative integer or math.huge expected, got -2)",
            "false\tscripts/test.lua:21: calling 'len' on bad self (Channel expected, got nil)",
            "false\tscripts/test.lua:22: attempt to modify a Channel (field 'foo')",
        ],
        "every function checks its arguments and blames the caller's line"
    );
}

#[test]
fn a_capacity_past_64_bit_integers_raises_and_a_large_one_works() {
    let out = output(
        r#"
        for _, n in ipairs({ 2 ^ 63, 2 ^ 64, 1e300 }) do
          local ok, e = pcall(Channel.new, n)
          print(ok, (string.gsub(e, "got .*", "got N")))
        end
        local big = Channel.new(2 ^ 53)
        print(big:cap() == 2 ^ 53, big:send("x"), big:len(), big:receive())
        "#,
        2,
    );
    let refused = "false\tbad argument #1 to 'new' (capacity below 2^63 or math.huge expected, got N";
    assert_eq!(
        out,
        [refused, refused, refused, "true\ttrue\t1\tx\ttrue"],
        "a clean error, not a broken channel"
    );
}

/// How `tostring(0/0)` reads in the VM the tests use.
fn nan_text() -> String {
    let out = output("print(tostring(0/0))", 1);
    out[0].clone()
}
