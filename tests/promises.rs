//! Promises and async/await: roblox-lua-promise v4 constructors, combinators,
//! utilities and methods, cancellation, unhandled rejections, `async`, `await` and `asyncTry`,
//! stepped frame by frame with a fixed DT (1/60 s: a wait of 0.05 s started on frame 1 ends on
//! frame 4, one of 0.02 s on frame 3).

mod common;
use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::*;

// ---------------------------------------------------------------------------------------------
// Constructors

#[test]
fn new_runs_the_executor_now_and_resolves_with_every_value() {
    let out = output(
        r##"
        local p = Promise.new(function(resolve) print("executor runs now") resolve(1, nil, 3) end)
        print("after new", p:getStatus())
        p:andThen(function(...) print("values", select("#", ...), ...) end)
        local r = Promise.resolve("r")
        print(r:getStatus(), r:await())
        local j = Promise.reject("j", 2)
        print(j:getStatus(), j:await())
        local followed = Promise.resolve(Promise.delay(0.05))
        print("followed", followed:getStatus())
        print("followed value", followed:expect() >= 0.05, time.frame())
        "##,
        6,
    );
    assert_eq!(
        out,
        [
            "executor runs now",
            "after new\tResolved",
            "values\t3\t1\tnil\t3",
            "Resolved\ttrue\tr",
            "Rejected\tfalse\tj\t2",
            "followed\tStarted",
            "followed value\ttrue\t4",
        ],
        "Promise.new/resolve/reject, and Promise.resolve(promise) following it"
    );
}

#[test]
fn every_shape_of_settled_values_reads_back_through_every_reader() {
    // One value that is not a table is kept as itself, anything else in a table: each reader
    // must see the same values either way, settled now or later, resolved or rejected.
    let out = output(
        r##"
        local t = { "t" }
        local function show(...)
          local parts = { tostring(select("#", ...)) }
          for i = 1, select("#", ...) do
            local v = select(i, ...)
            parts[#parts + 1] = v == t and "t" or tostring(v)
          end
          return table.concat(parts, " ")
        end
        local shapes = {
          { "nil", function(r) r(nil) end },
          { "false", function(r) r(false) end },
          { "zero", function(r) r(0) end },
          { "string", function(r) r("s") end },
          { "table", function(r) r(t) end },
          { "none", function(r) r() end },
          { "two", function(r) r(1, nil) end },
        }
        for _, shape in ipairs(shapes) do
          local name, settle = shape[1], shape[2]
          local later
          local now = Promise.new(function(resolve) settle(resolve) end)
          local pending = Promise.new(function(resolve) later = resolve end)
          local rejected = Promise.new(function(_, reject) settle(reject) end)
          local seen = {}
          pending:andThen(function(...) seen[#seen + 1] = "then " .. show(...) end)
          rejected:catch(function(...) seen[#seen + 1] = "catch " .. show(...) end)
          task.spawn(function()
            local got = show(await(pending)) -- (before `#seen` is read: it yields)
            seen[#seen + 1] = "await " .. got
          end)
          settle(later)
          task.wait()
          print(name, show(await(now)), show(now:await()), show(now:awaitStatus()), show(now:expect()),
            show(rejected:await()), show(Promise.all({ now }):expect()[1]),
            show(Promise.race({ pending }):expect()), table.concat(seen, ", "))
        end
        "##,
        20,
    );
    assert_eq!(
        out,
        [
            "nil\t1 nil\t2 true nil\t2 Resolved nil\t1 nil\t2 false nil\t1 nil\t1 nil\tcatch 1 nil, then 1 nil, await 1 nil",
            "false\t1 false\t2 true false\t2 Resolved false\t1 false\t2 false false\t1 false\t1 false\tcatch 1 false, then 1 false, await 1 false",
            "zero\t1 0\t2 true 0\t2 Resolved 0\t1 0\t2 false 0\t1 0\t1 0\tcatch 1 0, then 1 0, await 1 0",
            "string\t1 s\t2 true s\t2 Resolved s\t1 s\t2 false s\t1 s\t1 s\tcatch 1 s, then 1 s, await 1 s",
            "table\t1 t\t2 true t\t2 Resolved t\t1 t\t2 false t\t1 t\t1 t\tcatch 1 t, then 1 t, await 1 t",
            "none\t0\t1 true\t1 Resolved\t0\t1 false\t1 nil\t0\tcatch 0, then 0, await 0",
            "two\t2 1 nil\t3 true 1 nil\t3 Resolved 1 nil\t2 1 nil\t3 false 1 nil\t1 1\t2 1 nil\tcatch 2 1 nil, then 2 1 nil, await 2 1 nil",
        ],
        "the values of a settlement, as each reader hands them on"
    );
}

#[test]
fn a_task_awaiting_one_promise_after_another_wakes_only_for_the_one_it_awaits() {
    // The slot a finished await parked on is kept for the next await (of any task): each await
    // must still end when, and only when, its own promise settles.
    let out = output(
        r#"
        local rs, ps = {}, {}
        for i = 1, 5 do ps[i] = Promise.new(function(resolve) rs[i] = resolve end) end
        task.spawn(function()
          print("a got", await(ps[1]), time.frame())
          print("a got", await(ps[2]), time.frame())
        end)
        task.spawn(function()
          print("b got", await(ps[4]), time.frame())
        end)
        task.wait() rs[1]("one")
        task.wait()
        task.spawn(function() print("c got", await(ps[3]), time.frame()) end)
        rs[2]("two")
        task.wait() rs[1]("again") rs[5]("five")
        task.wait() rs[3]("three")
        task.wait() rs[4]("four")
        "#,
        8,
    );
    assert_eq!(
        out,
        ["a got\tone\t2", "a got\ttwo\t3", "c got\tthree\t5", "b got\tfour\t6"],
        "each await ends when, and only when, its own promise settles"
    );
}

#[test]
fn a_promise_settles_once_and_its_executor_may_yield() {
    let out = output(
        r#"
        print(Promise.new(function(resolve, reject) resolve("first") resolve("second") reject("third") end):expect())
        local q = Promise.new(function(resolve, reject) task.wait() reject("no") resolve("yes") end)
        print(q:await())
        local p = Promise.new(function(resolve)
          print("executor starts", time.frame())
          task.wait(0.05)
          print("executor resumes", time.frame())
          resolve("done")
        end)
        print("creator goes on", time.frame(), p:getStatus())
        print("awaited", await(p), time.frame())
        "#,
        8,
    );
    assert_eq!(
        out,
        [
            "first",
            "false\tno",
            "executor starts\t2",
            "creator goes on\t2\tStarted",
            "executor resumes\t5",
            "awaited\tdone\t5",
        ],
        "the first settlement wins; the executor yields without blocking its creator"
    );
}

#[test]
fn an_executor_error_rejects_with_a_promise_error() {
    let out = output(
        r#"
        local ok, e = Promise.new(function() error("kaboom") end):await()
        print(ok, Promise.Error.is(e), e.kind, e.error, e.parent)
        print(e.trace:find("stack traceback:", 1, true) ~= nil, e.trace:find("scripts/test.lua:2", 1, true) ~= nil)
        print(#e:getErrorChain(), e.trace:find("bevy_lua_coroutines/", 1, true) == nil)
        print(Promise.Error.isKind(e, Promise.Error.Kind.ExecutionError), tostring(e):find("-- Promise.Error(ExecutionError) --", 1, true) == 1)
        local t = { code = 7 }
        local ok2, e2 = Promise.new(function() error(t) end):await()
        print(ok2, e2 == t)
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "false\ttrue\tExecutionError\tscripts/test.lua:2: kaboom\tnil",
            // Luau's `debug.traceback` has no `stack traceback:` heading, only the frames.
            per_flavour("true\ttrue", "true\ttrue", "false\ttrue"),
            "1\ttrue",
            "true\ttrue",
            "false\ttrue",
        ],
        "a string error becomes an ExecutionError with its trace (no library frames); a table is the \
         rejection itself"
    );
}

#[test]
fn defer_starts_the_executor_later_in_the_same_step() {
    let out = output(
        r#"
        local p = Promise.defer(function(resolve) print("deferred executor", time.frame()) resolve("d") end)
        print("after defer", p:getStatus())
        local c = Promise.defer(function() print("never") end)
        c:cancel()
        print("await", await(p), time.frame())
        "#,
        3,
    );
    assert_eq!(
        out,
        ["after defer\tStarted", "deferred executor\t1", "await\td\t1"],
        "deferred: after the running work, same frame; cancelled before it starts: never runs"
    );
}

#[test]
fn try_and_promisify_call_now_and_turn_errors_into_rejections() {
    let out = output(
        r#"
        print(Promise.try(function(a, b) return a + b, "x" end, 2, 3):expect())
        local _, e = Promise.try(function() error("bad") end):await()
        print(e.kind, e.error)
        local sleepy = Promise.promisify(function(s) local got = task.wait(s) return got >= s end)
        local p = sleepy(0.05)
        print(p:getStatus())
        print(p:expect(), time.frame())
        "#,
        6,
    );
    assert_eq!(
        out,
        ["5\tx", "ExecutionError\tscripts/test.lua:3: bad", "Started", "true\t4"],
        "try and promisify"
    );
}

#[test]
fn delay_resolves_with_the_game_seconds_that_passed() {
    let out = output(
        r#"
        local e = await(Promise.delay(0.1))
        print(e >= 0.1, e < 0.1 + 0.017, time.frame())
        print(await(Promise.delay(0)) > 0, time.frame())
        "#,
        10,
    );
    assert_eq!(out, ["true\ttrue\t7", "true\t8"], "0.1 s is six frames; 0 is the next frame");
}

// ---------------------------------------------------------------------------------------------
// Handlers and chaining

#[test]
fn handlers_run_in_the_order_attached_each_in_its_own_thread() {
    let out = output(
        r#"
        local resolve
        local p = Promise.new(function(r) resolve = r end)
        p:andThen(function(v) print("A", v) task.wait() print("A after its yield", time.frame()) end)
        p:finally(function(status) print("B finally", status) end)
        p:andThen(function(v) print("C", v) end)
        task.spawn(function() print("D awaited", await(p)) end)
        p:catch(function() print("never") end)
        p:andThen(function(v) print("E", v) end)
        print("resolving", time.frame())
        resolve("v")
        print("resolved")
        task.wait()
        task.wait()
        "#,
        4,
    );
    assert_eq!(
        out,
        [
            "resolving\t1",
            "A\tv",
            "B finally\tResolved",
            "C\tv",
            "E\tv",
            "resolved",
            "D awaited\tv",
            "A after its yield\t2",
        ],
        "handlers start in order during resolve; a yielding handler does not hold up the next; an \
         awaiting task resumes after the running thread yields"
    );
}

#[test]
fn handlers_of_a_settled_promise_still_run() {
    let out = output(
        r#"
        local p = Promise.resolve("x")
        local r = Promise.reject("y")
        task.wait()
        p:andThen(function(v) print("late handler", v, time.frame()) end)
        r:catch(function(v) print("late catch", v) end)
        print("await settled", await(p))
        "#,
        4,
    );
    assert_eq!(out, ["late handler\tx\t2", "late catch\ty", "await settled\tx"], "late handlers");
}

#[test]
fn and_then_chains_and_follows_returned_promises() {
    let out = output(
        r#"
        Promise.resolve(1)
          :andThen(function(v) return v + 1 end)
          :andThen(function(v) return Promise.delay(0.05):andThenReturn(v * 10) end)
          :andThen(function(v) print("chained", v, time.frame()) return Promise.reject("stop") end)
          :andThen(function() print("skipped") end)
          :catch(function(e) print("caught", e) return "recovered" end)
          :andThen(function(v) print("after catch", v) end)
        local p = Promise.resolve("alias")
        p["then"](p, function(v) print("then alias", v) end)
        local _, e = Promise.resolve():andThen(function() return Promise.try(function() error("deep") end) end):await()
        print(e.kind, e.error, e.parent.error, #e:getErrorChain())
        "#,
        6,
    );
    assert_eq!(
        out,
        [
            "then alias\talias",
            "ExecutionError\tThis Promise was chained to a Promise that errored.\tscripts/test.lua:11: deep\t2",
            "chained\t20\t4",
            "caught\tstop",
            "after catch\trecovered",
        ],
        "andThen chains; a returned promise is followed; a chained error keeps the original as parent"
    );
}

#[test]
fn tap_and_the_call_and_return_variants() {
    let out = output(
        r#"
        Promise.resolve(1, 2):tap(function(a, b) print("tap", a, b) return "ignored" end)
          :andThen(function(a, b) print("after tap", a, b) end)
        Promise.resolve("v")
          :tap(function() return Promise.delay(0.05):andThen(function() print("tap's promise done", time.frame()) end) end)
          :andThen(function(v) print("after waiting tap", v, time.frame()) end)
        Promise.resolve("discarded"):andThenCall(print, "called", "with", "args")
        Promise.resolve("discarded"):andThenReturn("a", "b"):andThen(print)
        Promise.reject("discarded"):finallyReturn("fr"):andThen(print)
        Promise.resolve("kept"):finallyCall(print, "finallyCall", 1):andThen(print)
        "#,
        6,
    );
    assert_eq!(
        out,
        [
            "tap\t1\t2",
            "after tap\t1\t2",
            "called\twith\targs",
            "a\tb",
            "fr",
            "finallyCall\t1",
            "kept",
            "tap's promise done\t4",
            "after waiting tap\tv\t4",
        ],
        "tap passes values through (after the promise it returns); *Call and *Return"
    );
}

#[test]
fn finally_sees_resolve_reject_and_cancel_and_passes_the_outcome_on() {
    let out = output(
        r#"
        local function show(label) return function(status) print(label, status) end end
        Promise.resolve("ok"):finally(show("f1")):andThen(function(v) print("passes the value", v) end)
        Promise.reject("bad"):finally(show("f2")):catch(function(e) print("passes the rejection", e) end)
        local c = Promise.new(function() end)
        c:finally(show("f3"))
        c:cancel()
        c:finally(show("f3 late"))
        Promise.resolve("x"):finally(function() error("in finally") end)
          :catch(function(e) print("an error in finally wins", e.error) end)
        Promise.resolve("y"):finally(function() return Promise.delay(0.05) end)
          :andThen(function(v) print("after finally's promise", v, time.frame()) end)
        "#,
        6,
    );
    assert_eq!(
        out,
        [
            "f1\tResolved",
            "passes the value\tok",
            "f2\tRejected",
            "passes the rejection\tbad",
            "f3\tCancelled",
            "f3 late\tCancelled",
            "an error in finally wins\tscripts/test.lua:9: in finally",
            "after finally's promise\ty\t4",
        ],
        "finally"
    );
}

#[test]
fn finally_is_no_consumer_so_cancelling_the_real_ones_cancels_the_promise() {
    let out = output(
        r#"
        local p = Promise.new(function(_, _, onCancel) onCancel(function() print("p's hook") end) end)
        p:finally(function(status) print("finally", status) end)
        p:andThen(function() end):cancel()
        print("only a finally left", p:getStatus())
        local q = Promise.new(function() end)
        q:finally(function(status) print("q's finally", status) end):cancel()
        print("its finally's promise cancelled", q:getStatus())
        local r = Promise.new(function() end)
        r:andThen(function() end)
        r:finally(function() end):cancel()
        print("another consumer left", r:getStatus())
        local s = Promise.new(function() end)
        local back = s:finallyReturn("x")
        s:andThen(function() end):cancel()
        print("finallyReturn is none either", s:getStatus(), back:getStatus())
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "p's hook",
            "finally\tCancelled",
            "only a finally left\tCancelled",
            "q's finally\tCancelled",
            "its finally's promise cancelled\tCancelled",
            "another consumer left\tStarted",
            "finallyReturn is none either\tCancelled\tCancelled",
        ],
        "roblox-lua-promise v4: a finally handler does not hold its promise up"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancellation

#[test]
fn cancel_runs_the_hook_closes_the_executor_and_ignores_later_settlement() {
    let out = output(
        &closable(
            r#"
        local p = Promise.new(function(resolve, reject, onCancel)
          onCancel(function() print("hook ran") end)
          local guard <close> = setmetatable({}, { __close = function() print("executor closed") end })
          task.wait(0.05)
          print("never resumes")
          resolve("late")
        end)
        task.wait()
        p:cancel()
        print("status", p:getStatus())
        p:cancel()
        local on_cancel, resolve
        local q = Promise.new(function(r, _, oc) resolve, on_cancel = r, oc end)
        print("before", on_cancel())
        q:cancel()
        print("after", on_cancel(function() print("a hook set after cancel runs at once") end))
        resolve("ignored")
        print(q:getStatus())
        print(p:await())
        print(p:awaitStatus())
        task.wait(0.1)
        "#,
        ),
        12,
    );
    assert_eq!(
        out,
        closed_lines([
            "hook ran",
            "executor closed",
            "status\tCancelled",
            "before\tfalse",
            "a hook set after cancel runs at once",
            "after\ttrue",
            "Cancelled",
            "false",
            "Cancelled",
        ]),
        "cancel"
    );
    assert!(!out.iter().any(|l| l == "never resumes"), "the executor never resumes");
}

#[test]
fn cancellation_propagates_down_to_every_consumer() {
    let out = output(
        r#"
        local root = Promise.new(function() end)
        local a = root:andThen(function() print("never a") end)
        local b = a:andThen(function() print("never b") end)
        b:finally(function(s) print("b's finally", s) end)
        local c = root:finally(function(s) print("root's finally", s) end)
        local adopted = Promise.resolve(root)
        root:cancel()
        print(root:getStatus(), a:getStatus(), b:getStatus(), c:getStatus(), adopted:getStatus())
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "b's finally\tCancelled",
            "root's finally\tCancelled",
            "Cancelled\tCancelled\tCancelled\tCancelled\tCancelled",
        ],
        "consumers (andThen, finally, a promise following it) are cancelled; finally handlers run"
    );
}

#[test]
fn cancellation_propagates_up_once_every_consumer_is_cancelled() {
    let out = output(
        r#"
        local root = Promise.new(function(_, _, onCancel) onCancel(function() print("root cancelled") end) end)
        local a = root:andThen(function() end)
        local b = root:andThen(function() end)
        a:cancel()
        print("one of two cancelled", root:getStatus())
        b:cancel()
        print("both cancelled", root:getStatus())
        local awaited = Promise.new(function() end)
        local c = awaited:andThen(function() end)
        task.spawn(function() awaited:await() end)
        c:cancel()
        print("an awaiting task consumes it too", awaited:getStatus())
        local top = Promise.new(function(_, _, onCancel) onCancel(function() print("top cancelled") end) end)
        local last = top:andThen(function() end):andThen(function() end):finally(function() end)
        last:cancel()
        print("end of a chain cancelled", top:getStatus())
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "one of two cancelled\tStarted",
            "root cancelled",
            "both cancelled\tCancelled",
            "an awaiting task consumes it too\tStarted",
            "top cancelled",
            "end of a chain cancelled\tCancelled",
        ],
        "upward cancellation"
    );
}

// ---------------------------------------------------------------------------------------------
// Combinators

/// `after(seconds, value, fail?)`: settles after `seconds`; prints when it is cancelled.
const AFTER: &str = r#"
local function after(seconds, value, fail)
  return Promise.new(function(resolve, reject, onCancel)
    onCancel(function() print(value, "cancelled") end)
    task.wait(seconds)
    if fail then reject(value) else resolve(value) end
  end)
end
"#;

#[test]
fn all_all_settled_any_and_some() {
    let src = format!(
        "{AFTER}{}",
        r#"
        print("all", table.concat(await(Promise.all({ after(0.05, "a"), Promise.resolve("b", "dropped"), after(0.02, "c") })), ","), time.frame())
        print("all empty", #await(Promise.all({})))
        print("all rejects", pcall(await, Promise.all({ after(1, "x"), after(0.02, "boom", true) })))
        local settled = await(Promise.allSettled({
          Promise.resolve(1), Promise.reject(2), after(0.02, "z"), (function() local c = after(1, "c") c:cancel() return c end)(),
        }))
        print("allSettled", table.concat(settled, ","), time.frame())
        print("any", await(Promise.any({ after(0.05, "e1", true), after(0.03, "slowish"), after(0.02, "quick"), after(1, "q") })))
        print("any, all rejected", pcall(await, Promise.any({ Promise.reject("r1"), after(0.02, "r2", true) })))
        print("any empty", await(Promise.any({})))
        local some = await(Promise.some({ after(0.05, "s1"), after(0.02, "s2"), Promise.reject("s3"), after(0.03, "s4") }, 2))
        print("some", table.concat(some, ","), time.frame())
        print("some impossible", pcall(await, Promise.some({ Promise.reject("n1"), after(0.02, "n2", true), after(0.02, "n3") }, 2)))
        print("some zero", #await(Promise.some({ Promise.resolve("z0") }, 0)))
        "#
    );
    let out = output(&src, 20);
    assert_eq!(
        out,
        [
            "all\ta,b,c\t4",
            "all empty\t0",
            "x\tcancelled",
            "all rejects\tfalse\tboom",
            "c\tcancelled",
            "allSettled\tResolved,Rejected,Resolved,Cancelled\t8",
            "e1\tcancelled",
            "slowish\tcancelled",
            "q\tcancelled",
            "any\tquick",
            "any, all rejected\tfalse\tr2",
            "any empty\tnil",
            "s1\tcancelled",
            "some\ts2,s4\t14",
            "n3\tcancelled",
            "some impossible\tfalse\tn2",
            "some zero\t0",
        ],
        "all, allSettled, any, some (and the pending inputs they cancel once decided)"
    );
}

#[test]
fn race_settles_like_the_first_and_cancels_the_losers() {
    let src = format!(
        "{AFTER}{}",
        r#"
        local winner = Promise.race({ after(1, "slow"), after(0.05, "fast"), after(2, "slower") })
        print("race", await(winner), time.frame())
        local lost = after(1, "loser with another consumer")
        lost:andThen(function() end)
        print("race2", await(Promise.race({ lost, Promise.resolve("instant") })))
        print("the loser with another consumer goes on", lost:getStatus())
        print(await(Promise.race({ after(1, "d"), Promise.reject("rejected first") }):catch(function(e) return e end)))
        "#
    );
    let out = output(&src, 10);
    assert_eq!(
        out,
        [
            "slow\tcancelled",
            "slower\tcancelled",
            "race\tfast\t4",
            "race2\tinstant",
            "the loser with another consumer goes on\tStarted",
            "d\tcancelled",
            "rejected first",
        ],
        "race"
    );
}

#[test]
fn inputs_and_inner_promises_of_combinators_count_as_observed() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/observed.lua",
        r#"
        Promise.allSettled({ Promise.reject("a") })
        Promise.race({ Promise.reject("b") }):catch(function() end)
        Promise.any({ Promise.reject("c"), Promise.resolve("ok") })
        Promise.some({ Promise.reject("d"), Promise.resolve("ok") }, 1)
        Promise.delay(1):timeout(0.02):catch(function() end)
        Promise.reject("e"):tap(print):catch(function() end)
        Promise.all({ Promise.reject("only all's own promise is reported") })
        "#,
    );
    run(&mut app, 8);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "one report, for the promise `all` returned: {errs:#?}");
    assert_eq!(
        errs[0].message, "Unhandled Promise rejection: only all's own promise is reported",
        "the report names the rejection"
    );
}

#[test]
fn each_and_fold_go_in_order_and_stop_at_the_first_rejection() {
    let out = output(
        r#"
        local results = await(Promise.each({ "a", Promise.delay(0.05):andThenReturn("b"), "c" }, function(value, index)
          print("visit", index, value, time.frame())
          return Promise.delay(0.02):andThenReturn(value:upper())
        end))
        print("each", table.concat(results, ","), time.frame())
        print("each rejects", pcall(await, Promise.each({ 1, 2, 3 }, function(v)
          if v == 2 then return Promise.reject("stop at 2") end
          print("each visits", v)
          return v
        end)))
        print("each, a rejected input", pcall(await, Promise.each({ Promise.reject("pre") }, function() print("never") end)))
        local sum = await(Promise.fold({ 1, Promise.resolve(2), 3 }, function(acc, v, i)
          return Promise.delay(0):andThenReturn(acc + v * i)
        end, 10))
        print("fold", sum)
        local ok, e = pcall(await, Promise.fold({ 1, 2 }, function(acc, v) if v == 2 then error("reducer failed") end return acc + v end, 0))
        print("fold rejects", ok, e.error)
        "#,
        16,
    );
    assert_eq!(
        out,
        [
            "visit\t1\ta\t1",
            "visit\t2\tb\t4",
            "visit\t3\tc\t6",
            "each\tA,B,C\t8",
            "each visits\t1",
            "each rejects\tfalse\tstop at 2",
            "each, a rejected input\tfalse\tpre",
            "fold\t24",
            "fold rejects\tfalse\tscripts/test.lua:17: reducer failed",
        ],
        "each and fold"
    );
}

#[test]
fn list_combinators_refuse_a_table_that_is_not_an_array() {
    let out = output(
        r#"
        local p = Promise.resolve(1)
        for _, name in ipairs({ "all", "race", "allSettled", "any", "some" }) do
          print(select(2, pcall(Promise[name], p, 1)))
          print(select(2, pcall(Promise[name], { p, foo = 1 }, 1)))
          print(select(2, pcall(Promise[name], { p, [3] = p }, 1)))
        end
        print("an array is fine", Promise.all({ p, p }):getStatus())
        "#,
        2,
    );
    let mut want = Vec::new();
    for name in ["all", "race", "allSettled", "any", "some"] {
        want.push(format!("bad argument #1 to '{name}' (array of Promises expected, got Promise)"));
        want.push(format!(
            "bad argument #1 to '{name}' (array of Promises expected, got a table with key 'foo')"
        ));
        want.push(format!(
            "bad argument #1 to '{name}' (array of Promises expected, got a table with key 3)"
        ));
    }
    want.push("an array is fine\tResolved".into());
    assert_eq!(out, want, "roblox-lua-promise v4 raises for a list that is not an array");
}

#[test]
fn fold_and_each_go_on_at_once_when_an_input_settles() {
    let out = output(
        r#"
        local resolveIt
        local pending = Promise.new(function(resolve) resolveIt = resolve end)
        local f = Promise.fold({ pending, 2, 3 }, function(acc, v) return acc + v end, 0)
        local e = Promise.each({ pending, "b" }, function(v, i) print("each", i, v) return v end)
        print("before", f:getStatus(), e:getStatus())
        resolveIt(1)
        print("right after", f:getStatus(), e:getStatus())
        print("fold", f:expect())
        local inner
        local g = Promise.fold({ 1, 2 }, function(acc, v)
          inner = Promise.new(function(resolve) task.wait() resolve(acc + v) end)
          return inner
        end, 0)
        task.wait()
        print("a reducer's promise resolved: fold goes on in the same step", inner:getStatus(), g:getStatus())
        "#,
        4,
    );
    assert_eq!(
        out,
        [
            "before\tStarted\tStarted",
            "each\t1\t1",
            "each\t2\tb",
            "right after\tResolved\tResolved",
            "fold\t6",
            "a reducer's promise resolved: fold goes on in the same step\tStarted\tStarted",
        ],
        "roblox-lua-promise v4: fold and each go on synchronously"
    );
}

#[test]
fn a_cancelled_promise_from_fold_s_reducer_cancels_fold() {
    let out = output(
        r#"
        local done = Promise.new(function() end)
        done:cancel()
        local f = Promise.fold({ 1, 2 }, function(acc, v) if v == 2 then return done end return acc + v end, 0)
        print("already cancelled", f:getStatus())
        local later = Promise.new(function() end)
        local g = Promise.fold({ 1 }, function() return later end, 0)
        later:cancel()
        print("cancelled later", g:getStatus())
        local h = Promise.fold({ done }, function(acc) return acc end, 0)
        print("a cancelled input still rejects", h:getStatus())
        h:catch(function() end)
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "already cancelled\tCancelled",
            "cancelled later\tCancelled",
            "a cancelled input still rejects\tRejected"
        ],
        "roblox-lua-promise v4: fold resolves with the reducer's promise, so it is cancelled with it"
    );
}

#[test]
fn retry_and_retry_with_delay() {
    let out = output(
        r#"
        local attempts = 0
        local p = Promise.retry(function(tag)
          attempts = attempts + 1
          print("attempt", attempts, tag, time.frame())
          if attempts < 3 then return Promise.reject("fail " .. attempts) end
          return Promise.resolve("ok on " .. attempts)
        end, 5, "tag")
        print("retry", await(p))
        local n = 0
        print("retry exhausted", pcall(await, Promise.retry(function() n = n + 1 return Promise.reject("no " .. n) end, 2)))
        print("calls", n)
        local m = 0
        local q = Promise.retryWithDelay(function()
          m = m + 1
          print("delayed attempt", m, time.frame())
          if m < 3 then error("not yet") end
          return "done"
        end, 3, 0.05)
        print("retryWithDelay", await(q), time.frame())
        "#,
        10,
    );
    assert_eq!(
        out,
        [
            "attempt\t1\ttag\t1",
            "attempt\t2\ttag\t1",
            "attempt\t3\ttag\t1",
            "retry\tok on 3",
            "retry exhausted\tfalse\tno 3",
            "calls\t3",
            "delayed attempt\t1\t1",
            "delayed attempt\t2\t4",
            "delayed attempt\t3\t7",
            "retryWithDelay\tdone\t7",
        ],
        "retry calls once, then up to `times` more; retryWithDelay waits game time between"
    );
}

#[test]
fn from_event_resolves_on_the_firing_the_predicate_accepts_and_disconnects() {
    let out = output(
        r#"
        local Event = {}
        Event.__index = Event
        function Event.new() return setmetatable({ handlers = {} }, Event) end
        function Event:Connect(fn)
          local handlers = self.handlers
          handlers[#handlers + 1] = fn
          print("connected", #handlers)
          return { Disconnect = function()
            for i, h in ipairs(handlers) do
              if h == fn then table.remove(handlers, i) print("disconnected") return end
            end
          end }
        end
        function Event:Fire(...) for _, h in ipairs(self.handlers) do h(...) end end
        local ev = Event.new()
        local p = Promise.fromEvent(ev, function(n) return n > 2 end)
        ev:Fire(1)
        ev:Fire(3, "x")
        print("fromEvent", p:expect())
        print("handlers left", #ev.handlers)
        local q = Promise.fromEvent(ev)
        q:cancel()
        print("cancelled", q:getStatus(), #ev.handlers)
        local r = Promise.fromEvent(ev, function() error("predicate broke") end)
        ev:Fire()
        local _, e = r:await()
        print("predicate error", r:getStatus(), e.error, #ev.handlers)
        -- An event that fires while connecting (one that queues firings, say).
        local eager = Event.new()
        local connect = eager.Connect
        function eager:Connect(fn) local c = connect(self, fn) fn("queued") return c end
        print("fired while connecting", Promise.fromEvent(eager):expect(), #eager.handlers)
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "connected\t1",
            "disconnected",
            "fromEvent\t3\tx",
            "handlers left\t0",
            "connected\t1",
            "disconnected",
            "cancelled\tCancelled\t0",
            "connected\t1",
            "disconnected",
            "predicate error\tRejected\tscripts/test.lua:25: predicate broke\t0",
            "connected\t1",
            "disconnected",
            "fired while connecting\tqueued\t0",
        ],
        "fromEvent"
    );
}

// ---------------------------------------------------------------------------------------------
// Utilities and methods

#[test]
fn is_status_and_error_utilities_and_read_only_tables() {
    let out = output(
        r#"
        print(Promise.is(Promise.resolve()), Promise.is({}), Promise.is({ andThen = function() end }), Promise.is(5))
        print(Promise.Status.Started, Promise.Status.Resolved, Promise.Status.Rejected, Promise.Status.Cancelled)
        print(pcall(function() return Promise.Status.Done end))
        print(pcall(function() Promise.x = 1 end))
        print(pcall(function() Promise.Status.Started = "x" end))
        print(pcall(rawset, Promise.Error.Kind, "X", 1))
        local e = Promise.Error.new({ error = "base", kind = Promise.Error.Kind.TimedOut, context = "ctx" })
        local e2 = e:extend({ error = "wrapped" })
        print(Promise.Error.is(e2), Promise.Error.isKind(e2, "TimedOut"), e2.parent == e, #e2:getErrorChain(), e2.error)
        print(tostring(e2))
        print(getmetatable(Promise.resolve()), getmetatable(e), tostring(Promise.new(function() end)))
        print("foreign thenable", await({ andThen = function(self, resolve) resolve("adopted") end }))
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "true\tfalse\ttrue\tfalse",
            "Started\tResolved\tRejected\tCancelled",
            "false\tscripts/test.lua:4: Done is not in Promise.Status",
            "false\tscripts/test.lua:5: attempt to modify read-only table (field 'x')",
            "false\tscripts/test.lua:6: attempt to modify read-only table (field 'Started')",
            "false\tattempt to modify read-only table (field 'X')",
            "true\ttrue\ttrue\t2\twrapped",
            "-- Promise.Error(TimedOut) --\nwrapped\nbase\nctx",
            "Promise\tPromise.Error\tPromise(Started)",
            "foreign thenable\tadopted",
        ],
        "Promise.is, Status, Error, and the read-only base"
    );
}

#[test]
fn timeout_rejects_with_timed_out_and_cancels_the_promise() {
    let out = output(
        r#"
        print("fast", await(Promise.delay(0.02):timeout(0.1)) >= 0.02, time.frame())
        local slow = Promise.new(function(_, _, onCancel)
          onCancel(function() print("slow cancelled", time.frame()) end)
          task.wait(1)
        end)
        local ok, e = pcall(await, slow:timeout(0.05))
        print("timed out", ok, Promise.Error.isKind(e, Promise.Error.Kind.TimedOut), e.error, time.frame(), slow:getStatus())
        print("custom", pcall(await, Promise.new(function() end):timeout(0, "too slow")))
        "#,
        10,
    );
    assert_eq!(
        out,
        [
            "fast\ttrue\t3",
            "slow cancelled\t6",
            "timed out\tfalse\ttrue\tTimed out\t6\tCancelled",
            "custom\tfalse\ttoo slow",
        ],
        "timeout"
    );
}

#[test]
fn now_resolves_only_if_already_resolved() {
    let out = output(
        r#"
        print(await(Promise.resolve("now"):now()))
        local ok, e = pcall(await, Promise.delay(0.01):now())
        print(ok, e.kind, e.error)
        print(pcall(await, Promise.new(function() end):now("custom")))
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "now",
            "false\tNotResolvedInTime\tThis Promise was not resolved in time for :now()",
            "false\tcustom",
        ],
        "now"
    );
}

// ---------------------------------------------------------------------------------------------
// await, async, asyncTry

#[test]
fn await_on_a_settled_promise_does_not_yield() {
    let out = output(
        r#"
        local f = time.frame()
        local steps = 0
        local co = coroutine.create(function()
          print("awaited", await(Promise.resolve("ready")))
          print("method", Promise.resolve("r2"):expect(), Promise.reject("x"):await())
          steps = steps + 1
        end)
        print("resume", (coroutine.resume(co)))
        print("no yield", coroutine.status(co), steps, time.frame() - f)
        "#,
        2,
    );
    assert_eq!(
        out,
        ["awaited\tready", "method\tr2\tfalse\tx", "resume\ttrue", "no yield\tdead\t1\t0"],
        "a settled promise returns at once"
    );
}

#[test]
fn await_works_in_pcall_and_in_coroutines_the_script_made() {
    let out = output(
        r#"
        local ok0, late = pcall(await, Promise.delay(0.05):andThenReturn("late"))
        print("pcall", ok0, late, time.frame())
        local ok, e = pcall(function() return await(Promise.delay(0):andThen(function() error("nope", 0) end)) end)
        print("pcall reject", ok, e.kind, e.error, time.frame())
        local co = coroutine.create(function()
          local v = await(Promise.delay(0.05):andThenReturn("from a coroutine"))
          print("coroutine got", v, time.frame())
        end)
        print("resume", coroutine.resume(co))
        print("status", coroutine.status(co))
        local gen = coroutine.wrap(function() print("wrap got", Promise.delay(0):andThenReturn("w"):expect(), time.frame()) end)
        gen()
        print("main goes on", time.frame())
        task.wait(0.1)
        "#,
        20,
    );
    assert_eq!(
        out,
        [
            "pcall\ttrue\tlate\t4",
            "pcall reject\tfalse\tExecutionError\tnope\t5",
            "resume\ttrue",
            "status\tsuspended",
            "main goes on\t5",
            "wrap got\tw\t6",
            "coroutine got\tfrom a coroutine\t8",
        ],
        "the awaiting thread is the one resumed"
    );
}

#[test]
fn await_raises_the_rejection_with_the_awaiting_trace() {
    let out = output(
        r#"
        print(pcall(await, Promise.reject("plain value")))
        print(pcall(await, Promise.reject()))
        local t = {}
        local _, same = pcall(await, Promise.reject(t))
        print("a table is raised as it is", same == t)
        local failing = Promise.try(function() error("origin") end)
        local ok, e = pcall(await, failing)
        print(ok, e.kind, e.error, e.parent == select(2, failing:await()))
        local text = tostring(e)
        print(text:find("\t[async] scripts/test.lua:8: in ", 1, true) ~= nil, text:find("scripts/test.lua:7: origin", 1, true) ~= nil)
        local c = Promise.new(function() end)
        c:cancel()
        local _, ce = pcall(await, c)
        print("cancelled", ce.kind, ce.error)
        local r = Promise.reject("expected")
        print("expect", pcall(r.expect, r))
        "#,
        2,
    );
    assert_eq!(
        out,
        [
            "false\tplain value",
            "false\tExpected Promise rejected with no value.",
            "a table is raised as it is\ttrue",
            "false\tExecutionError\tscripts/test.lua:7: origin\ttrue",
            "true\ttrue",
            "cancelled\tAlreadyCancelled\tThe awaited Promise was cancelled",
            "expect\tfalse\texpected",
        ],
        "await raises"
    );
}

#[test]
fn async_runs_the_function_in_a_new_task_and_returns_a_promise() {
    let out = output(
        r#"
        local add = async(function(a, b) task.wait() return a + b, "sum" end)
        local p = add(2, 3)
        print(type(add), p:getStatus())
        local sum, label = await(p)
        print(sum, label, time.frame())
        local fails = async(function() error("async failed") end)
        local ok, e = pcall(await, fails())
        print(ok, e.kind, e.error)
        "#,
        4,
    );
    assert_eq!(
        out,
        ["function\tStarted", "5\tsum\t2", "false\tExecutionError\tscripts/test.lua:7: async failed"],
        "async"
    );
}

#[test]
fn async_try_hands_catch_the_message_and_an_async_stack() {
    let out = output(
        r#"
        local inner = async(function()
          task.wait()
          error("deep failure")
        end)
        local middle = async(function()
          local v = await(inner())
          return v
        end)
        asyncTry(function()
          await(middle())
        end, function(err)
          print("message", err.message)
          for _, f in ipairs(err.stack) do print("frame", f.file, f.line, f.func, f.async) end
          print("traceback", err.traceback)
          print("is an error", Promise.Error.is(err), err.kind)
          return "recovered", 2
        end, function()
          print("finally starts", time.frame())
          task.wait()
          print("finally ends", time.frame())
        end):andThen(function(a, b) print("resolved with", a, b, time.frame()) end)
        "#,
        5,
    );
    assert_eq!(
        out,
        [
            "message\tscripts/test.lua:4: deep failure",
            "frame\tscripts/test.lua\t4\tfunction <scripts/test.lua:2>\tfalse",
            "frame\tscripts/test.lua\t7\tfunction <scripts/test.lua:6>\ttrue",
            "frame\tscripts/test.lua\t11\tfunction <scripts/test.lua:10>\ttrue",
            "traceback\tscripts/test.lua:4: deep failure\nstack traceback:\n\
             \tscripts/test.lua:4: in function <scripts/test.lua:2>\n\
             \t[async] scripts/test.lua:7: in function <scripts/test.lua:6>\n\
             \t[async] scripts/test.lua:11: in function <scripts/test.lua:10>",
            "is an error\ttrue\tExecutionError",
            "finally starts\t2",
            "finally ends\t3",
            "resolved with\trecovered\t2\t3",
        ],
        "where it failed, then the frames of each awaiting task; finally completes before settling"
    );
}

/// Prints `err.stack` (one line per frame) and `err.traceback` for each way of failing two `async`
/// levels down: after a wait, before any wait, and with a table as the error value. Every await is
/// a tail call (`return await(...)`), which leaves no frame of the function that awaited.
const TWO_LEVELS: &str = r#"
local function show(err)
  print("message", err.message, type(err.value))
  for i, f in ipairs(err.stack) do print(i, f.file, f.line, f.func, f.async) end
  print(err.traceback)
end
local level2 = async(function() task.wait(0.05); error("deep") end)
local level1 = async(function() return await(level2()) end)
asyncTry(function() return await(level1()) end, show)
local early2 = async(function() error("early") end)
local early1 = async(function() return await(early2()) end)
asyncTry(function() return await(early1()) end, show)
local table2 = async(function() task.wait(); error({ code = 42 }) end)
local table1 = async(function() return await(table2()) end)
asyncTry(function() return await(table1()) end, function(err)
  print("a table", err.value.code)
  for i, f in ipairs(err.stack) do print(i, f.file, f.line, f.async) end
end)
"#;

#[test]
fn err_stack_runs_through_every_async_function_and_await_up_to_try() {
    let out = output(TWO_LEVELS, 6);
    let frames = |line: u32, a: u32, b: u32| {
        vec![
            format!("1\tscripts/test.lua\t{line}\tfunction <scripts/test.lua:{line}>\tfalse"),
            format!("2\tscripts/test.lua\t{a}\tfunction <scripts/test.lua:{a}>\ttrue"),
            format!("3\tscripts/test.lua\t{b}\tfunction <scripts/test.lua:{b}>\ttrue"),
        ]
    };
    let traceback = |message: &str, line: u32, a: u32, b: u32| {
        format!(
            "{message}\nstack traceback:\n\tscripts/test.lua:{line}: in function <scripts/test.lua:{line}>\n\
             \t[async] scripts/test.lua:{a}: in function <scripts/test.lua:{a}>\n\
             \t[async] scripts/test.lua:{b}: in function <scripts/test.lua:{b}>"
        )
    };
    let mut want = vec!["message\tscripts/test.lua:10: early\ttable".to_string()];
    want.extend(frames(10, 11, 12));
    want.push(traceback("scripts/test.lua:10: early", 10, 11, 12));
    want.push("a table\t42".into());
    want.extend(
        ["1\tscripts/test.lua\t13\tfalse", "2\tscripts/test.lua\t14\ttrue", "3\tscripts/test.lua\t15\ttrue"]
            .map(String::from),
    );
    want.push("message\tscripts/test.lua:7: deep\ttable".into());
    want.extend(frames(7, 8, 9));
    want.push(traceback("scripts/test.lua:7: deep", 7, 8, 9));
    assert_eq!(out, want, "from the raise, through each async function's await, to the try function");
}

#[test]
fn await_raises_with_the_whole_chain_and_an_unhandled_rejection_reports_it() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/chain.lua",
        r#"
local level2 = async(function() task.wait(); error("deep") end)
local level1 = async(function() return await(level2()) end)
local top = async(function() local v = await(level1()) return v end)
task.spawn(function()
  local ok, e = pcall(await, top())
  print(ok, e.error)
  print(e.trace)
end)
top()
"#,
    );
    run(&mut app, 5);
    let chain = "stack traceback:\n\tscripts/chain.lua:2: in function <scripts/chain.lua:2>\n\
                 \t[async] scripts/chain.lua:3: in function <scripts/chain.lua:3>\n\
                 \t[async] scripts/chain.lua:4: in function <scripts/chain.lua:4>";
    assert_eq!(
        printed(&app),
        [
            "false\tscripts/chain.lua:2: deep".to_string(),
            format!(
                "scripts/chain.lua:2: deep\n{chain}\n\t[async] scripts/chain.lua:6: in function <scripts/chain.lua:5>"
            ),
        ],
        "what await raises carries every await on the way, its own included"
    );
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "the promise nobody awaited: {errs:#?}");
    assert_eq!(errs[0].message, "Unhandled Promise rejection: scripts/chain.lua:2: deep", "message");
    assert_eq!(errs[0].traceback, chain, "the ScriptError's traceback is the same chain");
}

#[test]
fn async_try_without_catch_rejects_and_finally_always_runs() {
    let out = output(
        r#"
        asyncTry(function() error("plain") end, nil, function() print("finally after an error") end)
          :catch(function(err) print("rejected with", err.message, #err.stack, err.stack[1].line, err.stack[1].async) end)
        asyncTry(function() return "fine", 1 end):andThen(print)
        asyncTry(function() error("x") end, function() error("catch broke") end)
          :catch(function(e) print("catch's error", e.error) end)
        asyncTry(function() return "ok" end, nil, function() error("finally broke") end)
          :catch(function(e) print("finally's error", e.error) end)
        local p = asyncTry(function() task.wait(1) print("never") end, nil, function() print("finally on cancel") end)
        task.wait()
        p:cancel()
        "#,
        4,
    );
    assert_eq!(
        out,
        [
            "finally after an error",
            "rejected with\tscripts/test.lua:2: plain\t1\t2\tfalse",
            "fine\t1",
            "catch's error\tscripts/test.lua:5: catch broke",
            "finally's error\tscripts/test.lua:7: finally broke",
            "finally on cancel",
        ],
        "asyncTry"
    );
}

// ---------------------------------------------------------------------------------------------
// Unhandled rejections

#[test]
fn an_unobserved_rejection_is_reported_after_the_next_frame() {
    let mut app = create_app();
    let e = spawn_script(
        &mut app,
        "scripts/unhandled.lua",
        r#"
        Promise.reject("nobody listens")
        local handled = Promise.reject("caught on the next frame")
        task.wait()
        handled:catch(function() end)
        local late = Promise.reject("caught two frames later")
        task.wait()
        task.wait()
        late:catch(function() end)
        "#,
    );
    run(&mut app, 1);
    assert!(errors(&app).is_empty(), "not on the frame it happened: {:#?}", errors(&app));
    run(&mut app, 1);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "reported at the end of the next frame: {errs:#?}");
    assert_eq!(errs[0].kind, ScriptErrorKind::UnhandledRejection, "kind");
    assert_eq!(errs[0].entity, e, "the entity whose script made the promise");
    assert_eq!(errs[0].script, "scripts/unhandled.lua", "script");
    assert_eq!(errs[0].message, "Unhandled Promise rejection: nobody listens", "message");
    assert!(
        errs[0].traceback.contains("scripts/unhandled.lua:2"),
        "where it was made: {}",
        errs[0].traceback
    );
    run(&mut app, 1);
    let errs = errors(&app);
    assert_eq!(errs.len(), 2, "the one rejected on frame 2 is reported at the end of frame 3: {errs:#?}");
    assert_eq!(errs[1].message, "Unhandled Promise rejection: caught two frames later", "second message");
    run(&mut app, 5);
    assert_eq!(errors(&app).len(), 2, "a rejection handled within a frame is never reported");
}

#[test]
fn an_error_rejection_is_reported_with_its_own_traceback() {
    let mut app = create_app();
    spawn_script(&mut app, "scripts/err.lua", "\nPromise.try(function()\n  error('exploded')\nend)\n");
    run(&mut app, 3);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].message, "Unhandled Promise rejection: scripts/err.lua:3: exploded", "message");
    assert!(errs[0].traceback.starts_with("stack traceback:"), "traceback: {}", errs[0].traceback);
    assert!(errs[0].traceback.contains("scripts/err.lua:3"), "where it failed: {}", errs[0].traceback);
    assert!(!errs[0].traceback.contains("bevy_lua_coroutines/"), "no library frames: {}", errs[0].traceback);
}

#[test]
fn on_unhandled_rejection_callbacks_see_their_instance_s_rejections_until_unregistered() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/listener.lua",
        r##"
        local unregister = Promise.onUnhandledRejection(function(p, ...)
          print("callback", tostring(p), select("#", ...), (select(1, ...)), (select(2, ...)), time.frame())
        end)
        Promise.reject("first", 2)
        task.wait()
        task.wait()
        task.wait()
        unregister()
        unregister()
        Promise.reject("second")
        task.wait()
        task.wait()
        task.wait()
        print("done")
        "##,
    );
    spawn_script(
        &mut app,
        "scripts/other.lua",
        r#"Promise.onUnhandledRejection(function() print("another instance's callback") end)"#,
    );
    run(&mut app, 10);
    assert_eq!(
        printed(&app),
        ["callback\tPromise(Rejected)\t2\tfirst\t2\t3", "done"],
        "called (as a task of the instance, on the frame after the report) until unregistered; \
         other instances' callbacks do not see it"
    );
    assert_eq!(errors(&app).len(), 2, "both rejections are still reported");
}

#[test]
fn a_report_names_the_instance_that_made_the_promise() {
    let mut app = create_app();
    let a = spawn_script(&mut app, "scripts/a.lua", r#"Promise.reject("from a")"#);
    // A's chunk ends on frame 1; the task b spawns next takes over its task slot (and key).
    let b = spawn_script(
        &mut app,
        "scripts/b.lua",
        r#"task.spawn(function() task.wait() Promise.reject("from b") end) task.wait(10)"#,
    );
    run(&mut app, 4);
    let errs = errors(&app);
    let seen: Vec<_> = errs.iter().map(|e| (e.entity, e.script.as_str(), e.message.as_str())).collect();
    assert_eq!(
        seen,
        [
            (a, "scripts/a.lua", "Unhandled Promise rejection: from a"),
            (b, "scripts/b.lua", "Unhandled Promise rejection: from b"),
        ],
        "each rejection is reported for the instance whose code made the promise"
    );
}

/// A rejection left by an instance the game despawns is reported in that frame, still naming
/// the script and the entity it ran on.
#[test]
fn a_rejection_of_a_despawned_instance_is_reported_with_its_script() {
    let mut app = create_app();
    let e = spawn_script(&mut app, "scripts/gone.lua", r#"Promise.reject("left behind") task.wait(10)"#);
    run(&mut app, 1);
    app.world_mut().despawn(e);
    run(&mut app, 2);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!((errs[0].entity, errs[0].script.as_str()), (e, "scripts/gone.lua"), "{errs:#?}");
    assert_eq!(errs[0].message, "Unhandled Promise rejection: left behind", "message");
}

// ---------------------------------------------------------------------------------------------
// Lifecycle and time

#[test]
fn despawning_while_a_task_awaits_resumes_nothing_and_raises_nothing() {
    let mut app = create_app();
    let e = spawn_script(
        &mut app,
        "scripts/awaiter.lua",
        r#"
        local pending = Promise.new(function() end)
        task.spawn(function() local v = await(Promise.delay(0.1)) print("never", v) end)
        task.spawn(function() pending:await() print("never 2") end)
        local work = async(function() task.wait(0.2) print("never 3") end)
        work():andThen(function() print("never 4") end)
        Promise.delay(0.3):finally(function(status) print("finally", status) end)
        print("waiting")
        await(pending)
        "#,
    );
    run(&mut app, 3);
    assert_eq!(take_printed(&mut app), ["waiting"], "before the despawn");
    app.world_mut().despawn(e);
    run(&mut app, 30);
    assert!(printed(&app).is_empty(), "nothing of the instance resumed: {:?}", printed(&app));
    assert!(errors(&app).is_empty(), "no error: {:#?}", errors(&app));
    assert_eq!(live_tasks(&app), 0, "every task of the instance is gone");
}

#[test]
fn delay_and_timeout_run_on_game_time_and_hold_while_paused() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/paused.lua",
        r#"
        Promise.delay(0.05):andThen(function(e) print("delay", e >= 0.05, time.frame()) end)
        Promise.new(function() end):timeout(0.05):catch(function(e) print("timeout", e.kind, time.frame()) end)
        "#,
    );
    run(&mut app, 2);
    app.world_mut().resource_mut::<Time<Virtual>>().pause();
    run(&mut app, 10);
    assert!(printed(&app).is_empty(), "paused game time holds them: {:?}", printed(&app));
    app.world_mut().resource_mut::<Time<Virtual>>().unpause();
    run(&mut app, 5);
    assert_eq!(printed(&app), ["delay\ttrue\t14", "timeout\tTimedOut\t14"], "they go on after unpausing");
}

#[test]
fn a_long_chain_on_a_pending_promise_resolves_without_overflowing() {
    let out = output(
        r#"
        local resolve
        local p = Promise.new(function(r) resolve = r end)
        local last = p
        for i = 1, 2000 do last = last:andThen(function(v) return v + 1 end) end
        resolve(0)
        print("deep", last:getStatus(), await(last))
        "#,
        2,
    );
    assert_eq!(out, ["deep\tResolved\t2000"], "2000 chained handlers");
}

// ---------------------------------------------------------------------------------------------
// Arguments

#[test]
fn wrong_arguments_raise_bad_argument() {
    let out = output(
        r#"
        local p = Promise.resolve()
        local cases = {
          { "new", function() Promise.new(5) end },
          { "defer", function() Promise.defer() end },
          { "try", function() Promise.try("x") end },
          { "promisify", function() Promise.promisify({}) end },
          { "delay", function() Promise.delay("1") end },
          { "all", function() Promise.all(5) end },
          { "all item", function() Promise.all({ p, 5 }) end },
          { "allSettled", function() Promise.allSettled() end },
          { "race", function() Promise.race({ {} }) end },
          { "any", function() Promise.any("x") end },
          { "some", function() Promise.some({ p }, "1") end },
          { "some range", function() Promise.some({ p }, 2) end },
          { "each", function() Promise.each({}, 5) end },
          { "fold", function() Promise.fold(nil, print) end },
          { "retry", function() Promise.retry(print, "3") end },
          { "retryWithDelay", function() Promise.retryWithDelay(print, 3, nil) end },
          { "fromEvent", function() Promise.fromEvent({}) end },
          { "fromEvent predicate", function() Promise.fromEvent({ Connect = print }, 5) end },
          { "onUnhandledRejection", function() Promise.onUnhandledRejection() end },
          { "Error.new", function() Promise.Error.new(5) end },
          { "isKind", function() Promise.Error.isKind({}) end },
          { "andThen", function() p:andThen(5) end },
          { "andThen 2", function() p:andThen(nil, "x") end },
          { "catch", function() p:catch() end },
          { "tap", function() p:tap(1) end },
          { "finally", function() p:finally(true) end },
          { "andThenCall", function() p:andThenCall() end },
          { "finallyCall", function() p:finallyCall(2) end },
          { "timeout", function() p:timeout() end },
          { "bad self", function() p.getStatus(5) end },
          { "async", function() async(nil) end },
          { "await", function() await(5) end },
          { "asyncTry", function() asyncTry(print, 5) end },
        }
        for _, c in ipairs(cases) do
          local ok, err = pcall(c[2])
          print(c[1], ok, err)
        end
        local _, e = Promise.new(function(_, _, onCancel) onCancel(5) end):await()
        print("onCancel", e.error)
        "#,
        2,
    );
    let expected = [
        "new\tfalse\tscripts/test.lua:4: bad argument #1 to 'new' (function expected, got number)",
        "defer\tfalse\tscripts/test.lua:5: bad argument #1 to 'defer' (function expected, got nil)",
        "try\tfalse\tscripts/test.lua:6: bad argument #1 to 'try' (function expected, got string)",
        "promisify\tfalse\tscripts/test.lua:7: bad argument #1 to 'promisify' (function expected, got table)",
        "delay\tfalse\tscripts/test.lua:8: bad argument #1 to 'delay' (number expected, got string)",
        "all\tfalse\tscripts/test.lua:9: bad argument #1 to 'all' (table expected, got number)",
        "all item\tfalse\tscripts/test.lua:10: bad argument #1 to 'all' (Promise at index 2 expected, got number)",
        "allSettled\tfalse\tscripts/test.lua:11: bad argument #1 to 'allSettled' (table expected, got nil)",
        "race\tfalse\tscripts/test.lua:12: bad argument #1 to 'race' (Promise at index 1 expected, got table)",
        "any\tfalse\tscripts/test.lua:13: bad argument #1 to 'any' (table expected, got string)",
        "some\tfalse\tscripts/test.lua:14: bad argument #2 to 'some' (number expected, got string)",
        "some range\tfalse\tscripts/test.lua:15: bad argument #2 to 'some' (count between 0 and 1 expected, got 2)",
        "each\tfalse\tscripts/test.lua:16: bad argument #2 to 'each' (function expected, got number)",
        "fold\tfalse\tscripts/test.lua:17: bad argument #1 to 'fold' (table expected, got nil)",
        "retry\tfalse\tscripts/test.lua:18: bad argument #2 to 'retry' (number expected, got string)",
        "retryWithDelay\tfalse\tscripts/test.lua:19: bad argument #3 to 'retryWithDelay' (number expected, got nil)",
        "fromEvent\tfalse\tscripts/test.lua:20: bad argument #1 to 'fromEvent' (object with a Connect method expected, got table)",
        "fromEvent predicate\tfalse\tscripts/test.lua:21: bad argument #2 to 'fromEvent' (function expected, got number)",
        "onUnhandledRejection\tfalse\tscripts/test.lua:22: bad argument #1 to 'onUnhandledRejection' (function expected, got nil)",
        "Error.new\tfalse\tscripts/test.lua:23: bad argument #1 to 'new' (table expected, got number)",
        "isKind\tfalse\tscripts/test.lua:24: bad argument #2 to 'isKind' (Promise.Error.Kind expected, got nil)",
        "andThen\tfalse\tscripts/test.lua:25: bad argument #1 to 'andThen' (function expected, got number)",
        "andThen 2\tfalse\tscripts/test.lua:26: bad argument #2 to 'andThen' (function expected, got string)",
        "catch\tfalse\tscripts/test.lua:27: bad argument #1 to 'catch' (function expected, got nil)",
        "tap\tfalse\tscripts/test.lua:28: bad argument #1 to 'tap' (function expected, got number)",
        "finally\tfalse\tscripts/test.lua:29: bad argument #1 to 'finally' (function expected, got boolean)",
        "andThenCall\tfalse\tscripts/test.lua:30: bad argument #1 to 'andThenCall' (function expected, got nil)",
        "finallyCall\tfalse\tscripts/test.lua:31: bad argument #1 to 'finallyCall' (function expected, got number)",
        "timeout\tfalse\tscripts/test.lua:32: bad argument #1 to 'timeout' (number expected, got nil)",
        "bad self\tfalse\tscripts/test.lua:33: calling 'getStatus' on bad self (Promise expected, got number)",
        "async\tfalse\tscripts/test.lua:34: bad argument #1 to 'async' (function expected, got nil)",
        "await\tfalse\tscripts/test.lua:35: bad argument #1 to 'await' (Promise expected, got number)",
        "asyncTry\tfalse\tscripts/test.lua:36: bad argument #2 to 'asyncTry' (function expected, got number)",
        "onCancel\tscripts/test.lua:42: bad argument #1 to 'onCancel' (function expected, got number)",
    ];
    assert_eq!(out, expected, "every function checks its arguments");
}

/// A `timeout` whose promise settles first stops its timer: the timer's thread, a task of the
/// script, once slept on for the whole timeout (here 100 of them, for 1,000 seconds each).
#[test]
fn a_timeout_that_loses_the_race_stops_its_timer() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/t.lua",
        r#"
        for i = 1, 100 do Promise.resolve(i):timeout(1000):await() end
        local p = Promise.new(function(r) task.delay(0.05, r, 'late') end)
        print('raced', p:timeout(1000):await())
        task.wait()
        print('tasks', #task.list())
        "#,
    );
    run(&mut app, 10);
    assert_eq!(printed(&app), ["raced\ttrue\tlate", "tasks\t1"], "{:?}", errors(&app));
}
