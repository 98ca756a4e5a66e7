//! `Vec2`, `Vec3`, `Vec4` and `Quat` in scripts: constructors, constants, operators, methods,
//! their errors, read-only classes, and how they cross to and from the world (every vector the
//! world gives is one; `set` takes one or a plain table).

mod common;

use bevy::prelude::*;
use common::*;

/// `print` with numbers as `%.6g` (the same text in every Lua flavour), put on the script's first
/// line so line numbers stay.
const PRELUDE: &str = "local raw_print, select, type, format, tostring, concat = print, select, type, string.format, \
                       tostring, table.concat; local function print(...) local parts = {}; for i = 1, \
                       select('#', ...) do local v = select(i, ...); parts[i] = type(v) == 'number' and \
                       format('%.6g', v) or tostring(v) end; raw_print(concat(parts, '\\t')) end; ";

fn lua(src: &str) -> Vec<String> {
    output(&format!("{PRELUDE}{src}"), 2)
}

/// Runs `src`, which must fail; returns the error message.
fn lua_error(src: &str) -> String {
    let mut app = create_app();
    spawn_script(&mut app, "scripts/test.lua", &format!("{PRELUDE}{src}"));
    run(&mut app, 2);
    let errs = errors(&app);
    assert_eq!(errs.len(), 1, "one error expected, got {errs:#?}");
    errs[0].message.clone()
}

#[test]
fn constructors_fields_and_tostring() {
    let out = lua(r#"
        local v = Vec3.new(1, 2.5, -3)
        print(v.x, v.y, v.z, v.w)
        print(tostring(v), tostring(Vec2.new(1, 2)), tostring(Vec4.new(1, 2, 3, 4)))
        print(Vec3.new(), Vec3.new(1), Vec3.ZERO, Vec3.ONE, Vec3.X, Vec3.Y, Vec3.Z, Vec2.Y, Vec4.W)
        print(Quat.IDENTITY, getmetatable(v) == Vec3, getmetatable(Quat.IDENTITY) == Quat)
        "#);
    assert_eq!(
        out,
        [
            "1\t2.5\t-3\tnil",
            "Vec3(1, 2.5, -3)\tVec2(1, 2)\tVec4(1, 2, 3, 4)",
            "Vec3(0, 0, 0)\tVec3(1, 0, 0)\tVec3(0, 0, 0)\tVec3(1, 1, 1)\tVec3(1, 0, 0)\tVec3(0, 1, 0)\t\
             Vec3(0, 0, 1)\tVec2(0, 1)\tVec4(0, 0, 0, 1)",
            "Quat(0, 0, 0, 1)\ttrue\ttrue",
        ],
        "vectors read as fields and print as Vec3(x, y, z)"
    );
}

#[test]
fn operators_take_vectors_and_numbers_on_either_side() {
    let out = lua(r#"
        local a, b = Vec3.new(1, 2, 3), Vec3.new(4, 5, 6)
        print(a + b, a - b, a * b, b / a)
        print(a * 2, 2 * a, a / 2, 12 / a, a + 1, 1 + a, a - 1, 1 - a)
        print(-a, a + b * 2, a == Vec3.new(1, 2, 3), a == b, a ~= b)
        print(Vec2.new(1, 2) + Vec2.new(3, 4), Vec4.new(1, 1, 1, 1) * 3)
        "#);
    assert_eq!(
        out,
        [
            "Vec3(5, 7, 9)\tVec3(-3, -3, -3)\tVec3(4, 10, 18)\tVec3(4, 2.5, 2)",
            "Vec3(2, 4, 6)\tVec3(2, 4, 6)\tVec3(0.5, 1, 1.5)\tVec3(12, 6, 4)\tVec3(2, 3, 4)\tVec3(2, 3, 4)\t\
             Vec3(0, 1, 2)\tVec3(0, -1, -2)",
            "Vec3(-1, -2, -3)\tVec3(9, 12, 15)\ttrue\tfalse\ttrue",
            "Vec2(4, 6)\tVec4(3, 3, 3, 3)",
        ],
        "operators work component-wise, numbers on either side"
    );
}

#[test]
fn methods() {
    let out = lua(r#"
        local v = Vec3.new(3, 4, 0)
        print(v:length(), v:lengthSquared(), v:normalize(), Vec3.ZERO:normalize())
        print(v:dot(Vec3.new(1, 1, 1)), Vec3.X:cross(Vec3.Y), v:distance(Vec3.ZERO))
        print(Vec3.ZERO:lerp(Vec3.new(10, 0, 0), 0.25), v:min(Vec3.new(1, 5, -1)), v:max(Vec3.new(1, 5, -1)))
        print(Vec3.new(-1, 2, -3):abs(), v:clampLength(2.5), v:clampLength(10), Vec2.new(3, 4):length())
        "#);
    assert_eq!(
        out,
        [
            "5\t25\tVec3(0.6, 0.8, 0)\tVec3(0, 0, 0)",
            "7\tVec3(0, 0, 1)\t5",
            "Vec3(2.5, 0, 0)\tVec3(1, 4, -1)\tVec3(3, 5, 0)",
            "Vec3(1, 2, 3)\tVec3(1.5, 2, 0)\tVec3(3, 4, 0)\t5",
        ],
        "the methods compute what their names say"
    );
}

#[test]
fn quaternions_rotate_compose_and_invert() {
    let out = lua(r#"
        local q = Quat.fromAxisAngle(Vec3.Z, math.pi / 2)
        local r = q * Vec3.X
        print(format("%.3f %.3f %.3f", r.x, r.y, r.z))
        local qq = q * q
        r = qq * Vec3.X
        print(format("%.3f %.3f %.3f", r.x, r.y, r.z))
        r = q:inverse() * (q * Vec3.new(1, 2, 3))
        print(format("%.3f %.3f %.3f", r.x, r.y, r.z))
        local e = Quat.fromEuler(0.1, 0.2, 0.3)
        local x, y, z = e:toEuler()
        print(format("%.4f %.4f %.4f", x, y, z))
        local h = Quat.IDENTITY:slerp(q, 0.5) * Vec3.X
        print(format("%.3f %.3f %.3f", h.x, h.y, h.z))
        "#);
    assert_eq!(
        out,
        [
            "0.000 1.000 0.000",
            "-1.000 0.000 0.000",
            "1.000 2.000 3.000",
            "0.1000 0.2000 0.3000",
            "0.707 0.707 0.000"
        ],
        "quaternions follow glam's conventions"
    );
}

/// `Quat.fromEuler` is glam's `Quat::from_euler(EulerRot::XYZ, ...)`, checked against glam itself.
#[test]
fn euler_angles_match_glam() {
    let q = Quat::from_euler(EulerRot::XYZ, 0.4, -0.7, 1.1);
    let out = lua(r#"
        local q = Quat.fromEuler(0.4, -0.7, 1.1)
        print(format("%.5f %.5f %.5f %.5f", q.x, q.y, q.z, q.w))
        "#);
    assert_eq!(out, [format!("{:.5} {:.5} {:.5} {:.5}", q.x, q.y, q.z, q.w)], "the same rotation as glam's");
}

#[test]
fn vectors_are_values_and_classes_are_read_only() {
    let out = lua(r#"
        local a = Vec3.ZERO
        a.x = 5
        print(Vec3.ZERO, a)
        print(pcall(function() Vec3.new = nil end))
        print(pcall(function() Vec3.ZERO = 1 end))
        print(pcall(setmetatable, Vec3.new(1, 2, 3), {}))
        "#);
    assert_eq!(out.len(), 4, "{out:?}");
    assert_eq!(out[0], "Vec3(0, 0, 0)\tVec3(5, 0, 0)", "a constant is a fresh value each time");
    assert!(out[1].starts_with("false") && out[1].contains("read-only"), "{}", out[1]);
    assert!(out[2].starts_with("false") && out[2].contains("read-only"), "{}", out[2]);
    assert!(out[3].starts_with("false") && out[3].contains("protected metatable"), "{}", out[3]);
}

#[test]
fn bad_arguments_raise_like_lua() {
    let out = lua(r#"
        print(select(2, pcall(Vec3.new, "a")))
        print(select(2, pcall(Vec3.new, 1, {})))
        print(select(2, pcall(Vec3.X.dot, Vec3.X, 5)))
        print(select(2, pcall(Vec3.X.lerp, Vec3.X, Vec3.Y, "t")))
        print(select(2, pcall(function() return Quat.IDENTITY * 5 end)))
        print(select(2, pcall(Quat.fromAxisAngle, 1, 2)))
        "#);
    let want = [
        "bad argument #1 to 'new' (number expected, got string)",
        "bad argument #2 to 'new' (number expected, got table)",
        "bad argument #1 to 'dot' (Vec3 expected, got number)",
        "bad argument #2 to 'lerp' (number expected, got string)",
        "bad argument #2 to 'Quat.__mul' (Quat or Vec3 expected, got number)",
        "bad argument #1 to 'fromAxisAngle' (Vec3 expected, got number)",
    ];
    assert_eq!(out.len(), want.len(), "{out:?}");
    for (line, want) in out.iter().zip(want) {
        assert!(line.ends_with(want), "{line:?} should end with {want:?}");
    }
}

#[test]
fn arithmetic_on_a_wrong_operand_raises_not_panics() {
    let message = lua_error("local v = Vec3.new(1, 2, 3) + {}");
    assert!(
        message.contains("scripts/test.lua:1")
            && message.contains("bad argument #2 to '__add' (Vec3 or number expected, got table)"),
        "{message}"
    );
}

#[test]
fn arithmetic_keeps_lua_number_kinds_and_takes_any_operand_order() {
    // Integers stay integers (`print` shows `2`, not `2.0`) and `/` makes floats, as the same
    // arithmetic on plain numbers does.
    let out = lua(r#"
        local mtype = math.type or function() return "float" end -- LuaJIT and Luau: all floats
        local v = Vec3.new(1, 2, 3) + Vec3.new(1, 1, 1)
        print(mtype(v.x), v.x, (Vec3.new(1, 2, 3) * 2).y, (Vec3.new(1, 2, 3) / 2).x)
        print(2 - Vec3.new(1, 2, 3), Vec3.new(1, 2, 3) - 2, 6 / Vec2.new(2, 3), Vec4.new(1, 2, 3, 4) * Vec4.ONE)
        print(Vec3.new(1.5, nil, 2), mtype(Vec3.new(nil, 1).x), Vec3.new(0.5, 1, 2, 99))
    "#);
    let kind = if cfg!(feature = "lua54") { "integer" } else { "float" };
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out[0].starts_with(kind) && out[0].ends_with("4	0.5"), "{}", out[0]);
    assert_eq!(out[1], "Vec3(1, 0, -1)	Vec3(-1, 0, 1)	Vec2(3, 2)	Vec4(1, 2, 3, 4)");
    assert!(out[2].starts_with("Vec3(1.5, 0, 2)	") && out[2].ends_with("Vec3(0.5, 1, 2)"), "{}", out[2]);
}

#[test]
fn a_vector_whose_field_is_not_a_number_fails_like_lua_arithmetic() {
    let message = lua_error("local v = Vec3.new(1, 2, 3)\nv.y = {}\nlocal w = v + Vec3.X");
    assert!(message.contains("arithmetic") && message.contains("table"), "{message}");
    // A wrong operand or argument names the script's line, however many frames the operator runs
    // through (a C operator hands such operands to the Lua one).
    for (src, at, want) in [
        (
            "local v = Vec3.new(1, 2, 3) * Vec2.new(1, 2)",
            1,
            "bad argument #2 to '__mul' (Vec3 or number expected, got table)",
        ),
        (
            "local v = Vec2.new(1, 2) - Vec3.X",
            1,
            "bad argument #2 to '__sub' (Vec2 or number expected, got table)",
        ),
        (
            "local v = Vec3.new(1, 2, 3) / false",
            1,
            "bad argument #2 to '__div' (Vec3 or number expected, got boolean)",
        ),
        (
            "local v = Vec3.new(1, 2, 3)\nlocal w = Vec3.new(1, v)",
            2,
            "bad argument #2 to 'new' (number expected, got table)",
        ),
    ] {
        let message = lua_error(src);
        assert!(message.contains(&format!("scripts/test.lua:{at}")) && message.contains(want), "{message}");
    }
}

/// Lua memory stays flat while a script does vector arithmetic every frame (the collector keeps
/// up with the short-lived vectors).
#[test]
fn vector_arithmetic_does_not_grow_memory() {
    let mut app = create_app();
    spawn_script(
        &mut app,
        "scripts/test.lua",
        r#"
        local p, v = Vec3.ZERO, Vec3.new(1, 0.5, 0.25)
        while true do
            for _ = 1, 200 do p = p + v * 2 - Vec3.X end
            task.wait()
        end
        "#,
    );
    run(&mut app, 50);
    let memory = |app: &App| app.world().resource::<bevy_lua_coroutines::prelude::LuaRuntime>().used_memory();
    let early = memory(&app);
    run(&mut app, 1000);
    let late = memory(&app);
    assert!(errors(&app).is_empty(), "{:?}", errors(&app));
    assert!(late < early * 2 + 512 * 1024, "Lua memory grew from {early} to {late} bytes over 1,000 frames");
}
