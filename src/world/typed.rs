//! Typed fast paths: the paths scripts use most (`Transform`, its `translation`, `rotation` and
//! `scale`, and their numbers) read and written through `World::get` / `get_mut` on the concrete
//! type instead of a reflection walk. Which one a path takes is chosen once, when it is compiled
//! ([`Typed::of`]); every other path, and every case a fast path does not cover (a plain table
//! where a vector goes, a value of the wrong type), goes through reflection as before, so errors
//! read the same either way.

use std::any::TypeId;

use bevy::prelude::{Entity, Transform, World};

use super::vector::Kind;

/// A vector field of `Transform` (its number is its place in [`PARTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Translation = 0,
    Rotation = 1,
    Scale = 2,
}

/// The vector fields of `Transform`, in the order whole-`Transform` reads and writes take them.
pub(crate) const PARTS: [Part; 3] = [Part::Translation, Part::Rotation, Part::Scale];

impl Part {
    /// The class of the field's values.
    pub(crate) fn kind(self) -> Kind {
        match self {
            Part::Rotation => Kind::Quat,
            Part::Translation | Part::Scale => Kind::Vec3,
        }
    }

    /// The field's numbers (a `Vec3`'s fourth is 0).
    fn read(self, t: &Transform) -> [f64; 4] {
        let f = f64::from;
        match self {
            Part::Translation => [f(t.translation.x), f(t.translation.y), f(t.translation.z), 0.0],
            Part::Rotation => [f(t.rotation.x), f(t.rotation.y), f(t.rotation.z), f(t.rotation.w)],
            Part::Scale => [f(t.scale.x), f(t.scale.y), f(t.scale.z), 0.0],
        }
    }

    /// Writes number `i` of the field (`x`, `y`, `z`, `w` are 0..=3).
    fn write_number(self, t: &mut Transform, i: usize, n: f32) {
        match self {
            Part::Translation => t.translation[i] = n,
            Part::Scale => t.scale[i] = n,
            Part::Rotation => {
                let mut q = t.rotation.to_array();
                q[i] = n;
                t.rotation = bevy::math::Quat::from_array(q);
            }
        }
    }

    /// Writes the whole field.
    fn write(self, t: &mut Transform, [x, y, z, w]: [f64; 4]) {
        let (x, y, z, w) = (x as f32, y as f32, z as f32, w as f32);
        match self {
            Part::Translation => t.translation = bevy::math::Vec3::new(x, y, z),
            Part::Rotation => t.rotation = bevy::math::Quat::from_xyzw(x, y, z, w),
            Part::Scale => t.scale = bevy::math::Vec3::new(x, y, z),
        }
    }
}

/// A path with a typed fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Typed {
    /// `Transform` itself.
    Transform,
    /// `Transform.translation`, `.rotation` or `.scale`.
    Vector(Part),
    /// One number of those (`Transform.translation.x`): the field and the number's position.
    Number(Part, usize),
}

/// What a typed read found.
pub(crate) enum Read {
    /// The entity has no `Transform`.
    Missing,
    /// A number.
    Number(f64),
    /// A vector of that class.
    Vector(Kind, [f64; 4]),
    /// A whole `Transform`: translation, rotation, scale.
    Transform([f64; 10]),
}

impl Typed {
    /// The fast path for a path whose root is the type `root` and whose text after the root's
    /// name is `rest` (`.translation.x`), if it has one.
    pub(crate) fn of(root: TypeId, rest: &str) -> Option<Typed> {
        if root != TypeId::of::<Transform>() {
            return None;
        }
        if rest.is_empty() {
            return Some(Typed::Transform);
        }
        let rest = rest.strip_prefix('.')?;
        let (field, number) = match rest.split_once('.') {
            Some((field, number)) => (field, Some(number)),
            None => (rest, None),
        };
        let part = match field {
            "translation" => Part::Translation,
            "rotation" => Part::Rotation,
            "scale" => Part::Scale,
            _ => return None,
        };
        let Some(number) = number else { return Some(Typed::Vector(part)) };
        let i = ["x", "y", "z", "w"][..part.kind().len()].iter().position(|n| *n == number)?;
        Some(Typed::Number(part, i))
    }

    /// The number `lua/world.lua` keeps for this path, read back by [`Typed::from_code`].
    pub(crate) fn code(self) -> i64 {
        match self {
            Typed::Transform => 1,
            Typed::Vector(p) => 2 + p as i64,
            Typed::Number(p, i) => 8 + 4 * p as i64 + i as i64,
        }
    }

    /// The path whose [`Typed::code`] is `code`, if any (read by the C functions of Lua 5.4).
    #[cfg(feature = "lua54")]
    pub(crate) fn from_code(code: i64) -> Option<Typed> {
        match code {
            1 => Some(Typed::Transform),
            2..=4 => Some(Typed::Vector(PARTS[(code - 2) as usize])),
            8..=19 => {
                let (part, i) = (PARTS[((code - 8) / 4) as usize], ((code - 8) % 4) as usize);
                (i < part.kind().len()).then_some(Typed::Number(part, i))
            }
            _ => None,
        }
    }

    /// Reads the path on `entity`; `None` if the entity does not exist.
    pub(crate) fn read(self, world: &World, entity: Entity) -> Option<Read> {
        let entity = world.get_entity(entity).ok()?;
        let Some(t) = entity.get::<Transform>() else { return Some(Read::Missing) };
        Some(match self {
            Typed::Number(part, i) => Read::Number(part.read(t)[i]),
            Typed::Vector(part) => Read::Vector(part.kind(), part.read(t)),
            Typed::Transform => {
                let mut out = [0.0; 10];
                out[..3].copy_from_slice(&Part::Translation.read(t)[..3]);
                out[3..7].copy_from_slice(&Part::Rotation.read(t));
                out[7..].copy_from_slice(&Part::Scale.read(t)[..3]);
                Read::Transform(out)
            }
        })
    }

    /// Writes checked `numbers` (a number first, or a vector of this path's class) into the
    /// entity's `Transform`; `false` (nothing written) if the entity or its `Transform` is
    /// missing or this is the whole component, which the caller handles.
    pub(crate) fn write(self, world: &mut World, entity: Entity, numbers: [f64; 4]) -> bool {
        let Ok(mut entity) = world.get_entity_mut(entity) else { return false };
        let Some(mut t) = entity.get_mut::<Transform>() else { return false };
        match self {
            Typed::Number(part, i) => part.write_number(&mut t, i, numbers[0] as f32),
            Typed::Vector(part) => part.write(&mut t, numbers),
            Typed::Transform => return false,
        }
        true
    }

    /// Writes the parts of a whole `Transform` that are given (translation, rotation, scale);
    /// `false` if the entity or its `Transform` is missing.
    pub(crate) fn write_transform(world: &mut World, entity: Entity, parts: [Option<[f64; 4]>; 3]) -> bool {
        let Ok(mut entity) = world.get_entity_mut(entity) else { return false };
        let Some(mut t) = entity.get_mut::<Transform>() else { return false };
        for (part, numbers) in PARTS.into_iter().zip(parts) {
            if let Some(numbers) = numbers {
                part.write(&mut t, numbers);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "lua54")]
    #[test]
    fn codes_read_back_as_the_same_path() {
        let t = TypeId::of::<Transform>();
        for rest in ["", ".translation", ".rotation", ".scale", ".translation.z", ".rotation.w", ".scale.x"] {
            let typed = Typed::of(t, rest).expect("a typed path");
            assert_eq!(Typed::from_code(typed.code()), Some(typed), "{rest}");
        }
        assert_eq!(Typed::from_code(0), None);
        assert_eq!(Typed::from_code(11), None, "translation has no w");
        assert_eq!(Typed::from_code(20), None);
    }

    #[test]
    fn only_transform_paths_of_known_fields_are_typed() {
        let t = TypeId::of::<Transform>();
        assert_eq!(Typed::of(t, ""), Some(Typed::Transform));
        assert_eq!(Typed::of(t, ".translation"), Some(Typed::Vector(Part::Translation)));
        assert_eq!(Typed::of(t, ".rotation.w"), Some(Typed::Number(Part::Rotation, 3)));
        assert_eq!(Typed::of(t, ".scale.z"), Some(Typed::Number(Part::Scale, 2)));
        assert_eq!(Typed::of(t, ".scale.w"), None, "a Vec3 has no w");
        assert_eq!(Typed::of(t, ".translation.x.y"), None);
        assert_eq!(Typed::of(t, "[1]"), None);
        assert_eq!(Typed::of(TypeId::of::<f32>(), ".translation"), None);
    }
}
