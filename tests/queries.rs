//! `world.query` / `world.count`, the hierarchy (`entity:parent()`, `entity:children()`,
//! `world.spawn{ parent = ... }`) and resources (`world.getResource` / `world.setResource`).

mod common;

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use common::*;

#[derive(Component, Reflect, Default)]
#[reflect(Component, Default)]
struct Enemy;

#[derive(Component, Reflect, Default)]
#[reflect(Component, Default)]
struct Dead;

#[derive(Resource, Reflect, Default, Debug, PartialEq)]
#[reflect(Resource, Default)]
struct Score {
    points: i64,
    best: Vec2,
    label: String,
}

fn app() -> App {
    let mut app = create_app();
    app.register_type::<Enemy>().register_type::<Dead>().register_type::<Score>();
    app
}

fn run_script(app: &mut App, src: &str) -> Entity {
    let e = spawn_script(app, "scripts/test.lua", src);
    run(app, 2);
    let errs = errors(app);
    assert!(errs.is_empty(), "unexpected script errors: {errs:#?}");
    e
}

#[test]
fn query_iterates_matching_entities_in_order_and_count_counts_them() {
    let mut app = app();
    let mut enemies = Vec::new();
    for i in 0..5 {
        let mut e =
            app.world_mut().spawn((Name::new(format!("e{i}")), Transform::from_xyz(i as f32, 0.0, 0.0)));
        e.insert(Enemy);
        if i == 3 {
            e.insert(Dead);
        }
        enemies.push(e.id());
    }
    app.world_mut().spawn((Name::new("tree"), Transform::default()));
    run_script(
        &mut app,
        r#"
        local names = {}
        for e in world.query("Transform", "Enemy") do names[#names + 1] = e:get("Name") end
        print(table.concat(names, " "))
        names = {}
        for e in world.query("Enemy", { without = { "Dead" } }) do
            names[#names + 1] = e:get("Name")
            e:set("Transform.translation.y", 1)
        end
        print(table.concat(names, " "))
        print(world.count("Transform"), world.count("Enemy", { without = { "Dead" } }), world.count("Dead"))
        print(world.count("Enemy", "Dead", "Name"))
        local first = world.query("Enemy")()
        print(first == world.query("Enemy")(), rawequal(first, world.query("Enemy")()))
        "#,
    );
    assert_eq!(
        printed(&app),
        ["e0 e1 e2 e3 e4", "e0 e1 e2 e4", "6\t4\t1", "1", "true\ttrue"],
        "the script's own entity has no Transform; order is by entity index"
    );
    let ys: Vec<f32> =
        enemies.iter().map(|&e| app.world().get::<Transform>(e).unwrap().translation.y).collect();
    assert_eq!(ys, [1.0, 1.0, 1.0, 0.0, 1.0], "the loop wrote every living enemy");
}

#[test]
fn a_query_over_many_entities_sees_them_all() {
    let mut app = app();
    for _ in 0..3000 {
        app.world_mut().spawn(Enemy);
    }
    run_script(
        &mut app,
        r#"
        local n, seen = 0, {}
        for e in world.query("Enemy") do n = n + 1; seen[e.id] = true end
        local distinct = 0
        for _ in pairs(seen) do distinct = distinct + 1 end
        print(n, distinct, world.count("Enemy"))
        "#,
    );
    assert_eq!(printed(&app), ["3000\t3000\t3000"], "chunks cover every entity once");
}

#[test]
fn query_arguments_raise_like_lua() {
    let mut app = app();
    run_script(
        &mut app,
        r#"
        print(select(2, pcall(world.query)))
        print(select(2, pcall(world.query, 5)))
        print(select(2, pcall(world.query, "Enemy", "Helth")))
        print(select(2, pcall(world.count, "Enemy", { without = "Dead" })))
        print(select(2, pcall(world.count, "Enemy", { without = { 1 } })))
        print(select(2, pcall(world.count, "Enemy", { with = { "Dead" } })))
        print(world.count("Enemy", { without = {} }))
        "#,
    );
    let want = [
        "bad argument #1 to 'query' (a component name expected)",
        "bad argument #1 to 'query' (string expected, got number)",
        "bad argument #2 to 'query' (unknown component 'Helth'",
        "bad argument #2 to 'count' (without: table expected, got string)",
        "bad argument #2 to 'count' (without[1]: string expected, got number)",
        "bad argument #2 to 'count' (unknown option 'with')",
        "0",
    ];
    let out = printed(&app);
    assert_eq!(out.len(), want.len(), "{out:#?}");
    for (line, want) in out.iter().zip(want) {
        assert!(line.contains(want), "{line:?} should contain {want:?}");
    }
}

#[test]
fn the_hierarchy_reads_and_spawns_children() {
    let mut app = app();
    let root = app.world_mut().spawn(Name::new("root")).id();
    let a = app.world_mut().spawn((Name::new("a"), ChildOf(root))).id();
    app.world_mut().spawn((Name::new("b"), ChildOf(root)));
    let src = format!(
        r#"
        local root = world.entity({})
        local names = {{}}
        for _, c in ipairs(root:children()) do names[#names + 1] = c:get("Name") end
        print(table.concat(names, " "), root:parent(), world.entity({}):parent() == root)
        local c = world.spawn{{ parent = root, Name = "c" }}
        print(c:parent() == root, #root:children(), #c:children())
        print(select(2, pcall(world.spawn, {{ parent = 5 }})))
        print(select(2, pcall(root.children, 5)))
        "#,
        root.to_bits(),
        a.to_bits()
    );
    run_script(&mut app, &src);
    let out = printed(&app);
    assert_eq!(out[0], "a b\tnil\ttrue", "children in order; a root has no parent");
    assert_eq!(out[1], "true\t3\t0", "a spawned child is a child");
    assert!(out[2].ends_with("spawn: parent: entity expected, got number"), "{}", out[2]);
    assert!(out[3].ends_with("calling 'children' on bad self (entity expected, got number)"), "{}", out[3]);
}

#[test]
fn despawning_a_parent_despawns_its_children_and_stops_their_scripts() {
    let mut app = app();
    let child_script = script(&mut app, "scripts/child.lua", "while true do task.wait() print('child') end");
    run(&mut app, 1);
    let root = app.world_mut().spawn(Name::new("root")).id();
    let child = app.world_mut().spawn((LuaScripts::new(child_script), ChildOf(root))).id();
    run(&mut app, 3);
    assert!(printed(&app).contains(&"child".to_string()), "the child's script runs");
    let src = format!("world.entity({}):despawn()", root.to_bits());
    spawn_script(&mut app, "scripts/test.lua", &src);
    run(&mut app, 1);
    take_printed(&mut app);
    run(&mut app, 3);
    assert!(app.world().get_entity(child).is_err(), "the child went with its parent");
    assert!(printed(&app).is_empty(), "the child's script stopped: {:?}", printed(&app));
}

#[test]
fn resources_read_and_write_with_paths() {
    let mut app = app();
    app.insert_resource(Score { points: 3, best: Vec2::new(1.0, 2.0), label: "start".into() });
    run_script(
        &mut app,
        r#"
        local s = world.getResource("Score")
        print(s.points, s.best, s.label, world.getResource("Score.best.y") == 2)
        world.setResource("Score.points", world.getResource("Score.points") + 10)
        world.setResource("Score.best", Vec2.new(5, 6))
        world.setResource("Score", { label = "done" })
        print(select(2, pcall(world.getResource, "Score.pionts")))
        print(select(2, pcall(world.getResource, "Transform")))
        print(select(2, pcall(world.setResource, "Score.points", "many")))
        print(select(2, pcall(world.getResource, 5)))
        "#,
    );
    let out = printed(&app);
    assert_eq!(out[0], "3\tVec2(1, 2)\tstart\ttrue");
    assert!(
        out[1].ends_with("bad argument #1 to 'getResource' (Score.pionts: no field 'pionts')"),
        "{}",
        out[1]
    );
    assert!(out[2].contains("'Transform' is not a reflected resource"), "{}", out[2]);
    assert!(out[3].ends_with("Score.points: number expected, got string"), "{}", out[3]);
    assert!(out[4].ends_with("bad argument #1 to 'getResource' (string expected, got number)"), "{}", out[4]);
    assert_eq!(
        app.world().resource::<Score>(),
        &Score { points: 13, best: Vec2::new(5.0, 6.0), label: "done".into() },
        "every write landed, the failed one changed nothing"
    );
}

#[test]
fn a_missing_resource_reads_nil_and_cannot_be_set() {
    let mut app = app();
    run_script(
        &mut app,
        r#"
        print(world.getResource("Score"), world.getResource("Score.points"))
        print(select(2, pcall(world.setResource, "Score.points", 1)))
        "#,
    );
    let out = printed(&app);
    assert_eq!(out[0], "nil\tnil");
    assert!(out[1].ends_with("resource 'Score' does not exist"), "{}", out[1]);
}
