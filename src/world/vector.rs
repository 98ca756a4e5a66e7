//! `Vec2`, `Vec3`, `Vec4` and `Quat` for scripts: value classes written in Lua (`lua/vector.lua`,
//! a template expanded here once per class, and `lua/quat.lua`), and which glam types the world
//! converts to them.
//!
//! A vector is a Lua table with a metatable shared by its class, so reading a field is a raw
//! table read and arithmetic in a script never calls into Rust through mlua (on Lua 5.4 the
//! operators of `Vec2`/`Vec3`/`Vec4` are C functions over the same tables, see
//! [`super::vector_ops`]); Rust makes one by passing its numbers to Lua (the entity methods' Lua
//! side, or the per-type constructors of [`super::convert`]), never field by field, or builds it
//! with the C API (`super::fast`).

use std::any::TypeId;

use bevy::math::{Quat, Vec2, Vec3, Vec3A, Vec4};
use bevy::reflect::PartialReflect;
use mlua::{Function, Lua, Table, Value};

/// The vector classes of a VM (app data): their constructors `new(x, y, ...)`, which take numbers
/// as they are, in the order of the glam type's fields.
pub(crate) struct Vectors {
    /// `Vec2`, `Vec3`, `Vec4`, `Quat`, indexed by [`Kind`] - 2 (so a shape constructor's chunk
    /// receives them as `V2`..`V5`).
    pub constructors: (Function, Function, Function, Function),
    /// `unpack(v) -> kind, x, y, z, w` for a vector value (`kind` its [`Kind`] number), or
    /// nothing for any other table.
    pub unpack: Function,
}

/// The numbers of `t` if it is a vector value (a class made by this module), for writing into a
/// glam vector of class `kind` that holds `current`; `None` for any other table (patched field
/// by field); an error for a vector of another class or with a field that is not a number.
pub(crate) fn unpack(
    t: &Table,
    kind: Kind,
    current: [f64; 4],
    path: String,
) -> Result<Option<[f64; 4]>, String> {
    let Some(unpack) =
        t.weak_lua().try_upgrade().and_then(|lua| lua.app_data_ref::<Vectors>().map(|v| v.unpack.clone()))
    else {
        return Ok(None);
    };
    let (given, x, y, z, w): (Option<i64>, Value, Value, Value, Value) =
        unpack.call(t).map_err(|e| format!("{path}: {}", crate::error::split_traceback(&e).0))?;
    let Some(given) = given else { return Ok(None) };
    if given != kind as i64 {
        let name = [Kind::Vec2, Kind::Vec3, Kind::Vec4, Kind::Quat][(given as usize).clamp(2, 5) - 2].name();
        return Err(format!("{path}: {} expected, got {name}", kind.name()));
    }
    let mut out = current;
    let given = checked(kind, [&x, &y, &z, &w], &path)?;
    out[..kind.len()].copy_from_slice(&given[..kind.len()]);
    Ok(Some(out))
}

/// The vector class a glam type converts to. Its number is the tag the entity methods' Lua side
/// reads (`lua/world.lua`): `2` is `Vec2`, `3` `Vec3`, `4` `Vec4`, `5` `Quat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Vec2 = 2,
    Vec3 = 3,
    Vec4 = 4,
    Quat = 5,
}

impl Kind {
    /// The class values of the glam type `id` convert to, if any.
    pub(crate) fn of(id: TypeId) -> Option<Kind> {
        if id == TypeId::of::<Vec3>() || id == TypeId::of::<Vec3A>() {
            Some(Kind::Vec3)
        } else if id == TypeId::of::<Quat>() {
            Some(Kind::Quat)
        } else if id == TypeId::of::<Vec2>() {
            Some(Kind::Vec2)
        } else if id == TypeId::of::<Vec4>() {
            Some(Kind::Vec4)
        } else {
            None
        }
    }

    /// The class's name in Lua.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Vec2 => "Vec2",
            Kind::Vec3 => "Vec3",
            Kind::Vec4 => "Vec4",
            Kind::Quat => "Quat",
        }
    }

    /// How many numbers a value of the class has.
    pub(crate) fn len(self) -> usize {
        match self {
            Kind::Vec2 => 2,
            Kind::Vec3 => 3,
            Kind::Vec4 | Kind::Quat => 4,
        }
    }

    /// The constructor of this class in `lua`.
    pub(crate) fn constructor(self, lua: &Lua) -> Option<Function> {
        let vectors = lua.app_data_ref::<Vectors>()?;
        let c = &vectors.constructors;
        Some(match self {
            Kind::Vec2 => c.0.clone(),
            Kind::Vec3 => c.1.clone(),
            Kind::Vec4 => c.2.clone(),
            Kind::Quat => c.3.clone(),
        })
    }
}

/// The class and numbers of a glam vector (unused trailing numbers are 0), if `value` is one.
pub(crate) fn numbers(value: &dyn PartialReflect) -> Option<(Kind, [f64; 4])> {
    let f = |v: f32| f64::from(v);
    if let Some(v) = value.try_downcast_ref::<Vec3>() {
        return Some((Kind::Vec3, [f(v.x), f(v.y), f(v.z), 0.0]));
    }
    if let Some(q) = value.try_downcast_ref::<Quat>() {
        return Some((Kind::Quat, [f(q.x), f(q.y), f(q.z), f(q.w)]));
    }
    if let Some(v) = value.try_downcast_ref::<Vec2>() {
        return Some((Kind::Vec2, [f(v.x), f(v.y), 0.0, 0.0]));
    }
    if let Some(v) = value.try_downcast_ref::<Vec4>() {
        return Some((Kind::Vec4, [f(v.x), f(v.y), f(v.z), f(v.w)]));
    }
    if let Some(v) = value.try_downcast_ref::<Vec3A>() {
        return Some((Kind::Vec3, [f(v.x), f(v.y), f(v.z), 0.0]));
    }
    None
}

/// Writes a vector's numbers into `slot` if it is a glam vector of that shape; whether it was.
pub(crate) fn write(slot: &mut dyn PartialReflect, [x, y, z, w]: [f64; 4]) -> bool {
    let (x, y, z, w) = (x as f32, y as f32, z as f32, w as f32);
    if let Some(v) = slot.try_downcast_mut::<Vec3>() {
        *v = Vec3::new(x, y, z);
    } else if let Some(q) = slot.try_downcast_mut::<Quat>() {
        *q = Quat::from_xyzw(x, y, z, w);
    } else if let Some(v) = slot.try_downcast_mut::<Vec2>() {
        *v = Vec2::new(x, y);
    } else if let Some(v) = slot.try_downcast_mut::<Vec4>() {
        *v = Vec4::new(x, y, z, w);
    } else if let Some(v) = slot.try_downcast_mut::<Vec3A>() {
        *v = Vec3A::new(x, y, z);
    } else {
        return false;
    }
    true
}

/// The numbers of a vector of class `kind` as Lua passed them, each checked to be a number
/// (`Transform.translation.y: number expected, got string`).
pub(crate) fn checked(kind: Kind, values: [&Value; 4], path: &str) -> Result<[f64; 4], String> {
    let mut out = [0.0; 4];
    for (i, field) in ["x", "y", "z", "w"][..kind.len()].iter().enumerate() {
        out[i] = match values[i] {
            Value::Number(n) => *n,
            Value::Integer(n) => *n as f64,
            other => {
                return Err(format!(
                    "{path}.{field}: number expected, got {}",
                    crate::error::lua_type(other)
                ));
            }
        };
    }
    Ok(out)
}

/// Expands `lua/vector.lua` for a class with `fields`: `@NAME` is the class name, `{{expr}}` is
/// `expr` once per field (`$` standing for it) joined by ", ", and `{{+ expr}}`, `{{or expr}}`,
/// `{{and expr}}` are joined by that operator.
fn expand(template: &str, name: &str, fields: &[&str]) -> String {
    let template = template.replace("@NAME", name);
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = start + rest[start..].find("}}").expect("every {{ in lua/vector.lua closes");
        let inner = &rest[start + 2..end];
        let (separator, expr) = [("+ ", " + "), ("or ", " or "), ("and ", " and ")]
            .iter()
            .find_map(|(prefix, sep)| inner.strip_prefix(prefix).map(|e| (*sep, e)))
            .unwrap_or((", ", inner));
        let parts: Vec<String> = fields.iter().map(|f| expr.replace('$', f)).collect();
        out.push_str(&parts.join(separator));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Loads the classes into `lua`; returns them by name (`Vec2`, `Vec3`, `Vec4`, `Quat`), for the
/// shared base, and the modules (with each class's metatable) for the entity methods' Lua side.
pub(crate) fn install(lua: &Lua, bad: &Function) -> mlua::Result<(Table, Table)> {
    let classes = lua.create_table()?;
    let modules = lua.create_table()?;
    let mut constructors = Vec::new();
    let mut vec3 = None;
    // The private key every vector answers with its class (`v[KEY]`), shared by the classes.
    let key = lua.create_table()?;
    for (name, fields) in
        [("Vec2", &["x", "y"][..]), ("Vec3", &["x", "y", "z"]), ("Vec4", &["x", "y", "z", "w"])]
    {
        let source = expand(include_str!("../lua/vector.lua"), name, fields);
        let module: Table =
            lua.load(source).set_name(format!("=bevy_lua_coroutines/{name}")).call((bad, &key))?;
        #[cfg(feature = "lua54")]
        super::vector_ops::install(lua, &module, fields.len(), bad)?;
        classes.raw_set(name, module.raw_get::<Table>("class")?)?;
        constructors.push(module.raw_get::<Function>("new")?);
        if name == "Vec3" {
            vec3 = Some(module.clone());
        }
        modules.raw_set(name, module)?;
    }
    let quat: Table = lua
        .load(include_str!("../lua/quat.lua"))
        .set_name("=bevy_lua_coroutines/quat.lua")
        .call((bad, &key, vec3))?;
    classes.raw_set("Quat", quat.raw_get::<Table>("class")?)?;
    constructors.push(quat.raw_get::<Function>("new")?);
    modules.raw_set("Quat", quat)?;
    modules.raw_set("key", &key)?;
    let [v2, v3, v4, q]: [Function; 4] = constructors.try_into().expect("four classes");
    let unpack: Function = lua
        .load(
            "local KEY, V2, V3, V4, Q = ...\n\
             local kinds = { [V2] = 2, [V3] = 3, [V4] = 4, [Q] = 5 }\n\
             return function(v)\n\
               local kind = kinds[v[KEY] or false]\n\
               if kind then return kind, v.x, v.y, v.z, v.w end\n\
             end",
        )
        .set_name("=bevy_lua_coroutines/unpack")
        .call((
            &key,
            classes.raw_get::<Table>("Vec2")?,
            classes.raw_get::<Table>("Vec3")?,
            classes.raw_get::<Table>("Vec4")?,
            classes.raw_get::<Table>("Quat")?,
        ))?;
    lua.set_app_data(Vectors { constructors: (v2, v3, v4, q), unpack });
    Ok((classes, modules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_expands_per_field() {
        let out = expand("f({{$}}) {{+ a.$ * b.$}} {{or $ == nil}} @NAME", "Vec2", &["x", "y"]);
        assert_eq!(out, "f(x, y) a.x * b.x + a.y * b.y x == nil or y == nil Vec2");
    }
}
