//! Paths into components and resources (`"Transform.translation.x"`, `"Inventory.slots[2].count"`),
//! parsed and checked against the type's reflection once, then kept in a per-VM cache
//! ([`Paths`]) that the Lua side of the entity methods indexes by number.
//!
//! Syntax: the type's name, then `.field` (a struct field, or an enum variant's name followed by
//! its fields, as `get` shows them: `"Brain.mode.Chase.speed"`) and `[n]` (a position in a list,
//! array, tuple or tuple struct, 1-based like the tables `get` returns), in any order. `Option`s
//! are entered transparently: `"Brain.speed"` is the `f32` inside, or `nil` for `None`.
//!
//! What the type's reflection fixes (struct fields, positions in tuples and arrays) is checked when
//! the path is compiled, so `"Transform.tranlation"` fails at once naming the bad segment; what
//! depends on the value (list lengths, the current variant, `None`) is checked on each access.

use std::any::TypeId;

use bevy::ecs::component::ComponentId;
use bevy::ecs::reflect::ReflectComponent;
use bevy::platform::collections::HashMap;
use bevy::reflect::{PartialReflect, ReflectMut, ReflectRef, TypeInfo, TypeRegistry};

use super::typed::Typed;
use super::vector::Kind;

/// Most paths one VM keeps compiled; past this, paths are compiled on every use (scripts that
/// build path strings in a loop do not grow memory without bound).
pub(crate) const MAX_CACHED: usize = 4096;

/// One step into a value.
#[derive(Clone, Debug)]
enum Access {
    /// The `i`th field of a struct (its index, resolved from the name when the path was compiled).
    FieldAt(usize),
    /// A field by name (of an enum variant, or of a value whose type was not known statically).
    Field(Box<str>),
    /// A 0-based position in a list, array, tuple or tuple struct.
    Index(usize),
    /// The variant named must be the current one (`Brain.mode.Chase`).
    Variant(Box<str>),
    /// The value inside an `Option` (`None` ends the walk).
    Some,
}

/// A step and the length of the path text up to and including it (for errors).
#[derive(Clone, Debug)]
struct Step {
    access: Access,
    end: usize,
}

/// What the value at the end of a path is, when its type is known statically: the types a path
/// reads and writes without a reflection walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Leaf {
    F32,
    F64,
    Vector(Kind),
    /// Anything else: converted by walking its reflection.
    Other,
}

/// A compiled path: the type at its root and the steps below it.
pub(crate) struct CompiledPath {
    /// The whole path, as the script wrote it.
    pub text: Box<str>,
    /// How long the root's name is in `text`.
    pub root_len: usize,
    /// The root type.
    pub type_id: TypeId,
    steps: Vec<Step>,
    pub leaf: Leaf,
    /// How the root is reached as a component (resources are components too).
    pub component: Option<ReflectComponent>,
    /// The root's component id in the world, once registered.
    pub component_id: Option<ComponentId>,
    /// Whether the root is a reflected resource.
    pub resource: bool,
    /// Whether the root component can be changed in place (else it is replaced whole).
    pub mutable: bool,
    /// The typed fast path that reads and writes this path without reflection, if any.
    pub typed: Option<Typed>,
}

/// Why a walk stopped.
pub(crate) enum Stop {
    /// An `Option` on the way is `None` (at this step's prefix).
    None(String),
    /// The value does not have what the path names.
    Error(String),
}

impl CompiledPath {
    /// The root's name (`Transform`).
    pub fn root(&self) -> &str {
        &self.text[..self.root_len]
    }

    /// Whether the path is the root alone.
    pub fn is_root(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether every step is a struct field resolved when the path was compiled, so a walk
    /// over a value of the root type cannot fail.
    pub fn is_static(&self) -> bool {
        self.steps.iter().all(|s| matches!(s.access, Access::FieldAt(_)))
    }

    /// The path text up to step `i` (the root for `None`).
    fn prefix(&self, i: Option<usize>) -> &str {
        match i {
            Some(i) => &self.text[..self.steps[i].end],
            None => self.root(),
        }
    }

    /// The value at the end of the path inside `root`.
    pub fn walk<'a>(&self, root: &'a dyn PartialReflect) -> Result<&'a dyn PartialReflect, Stop> {
        let mut value = root;
        for (i, step) in self.steps.iter().enumerate() {
            let before = if i == 0 { None } else { Some(i - 1) };
            value = self.step_ref(value, &step.access, before, i)?;
        }
        Ok(value)
    }

    fn step_ref<'a>(
        &self,
        value: &'a dyn PartialReflect,
        access: &Access,
        before: Option<usize>,
        i: usize,
    ) -> Result<&'a dyn PartialReflect, Stop> {
        let found = match (access, value.reflect_ref()) {
            (Access::FieldAt(n), ReflectRef::Struct(s)) => s.field_at(*n),
            (Access::Field(name), ReflectRef::Struct(s)) => s.field(name),
            (Access::Field(name), ReflectRef::Enum(e)) => e.field(name),
            (Access::Index(n), ReflectRef::List(l)) => l.get(*n),
            (Access::Index(n), ReflectRef::Array(a)) => a.get(*n),
            (Access::Index(n), ReflectRef::Tuple(t)) => t.field(*n),
            (Access::Index(n), ReflectRef::TupleStruct(t)) => t.field(*n),
            (Access::Index(n), ReflectRef::Enum(e)) => e.field_at(*n),
            (Access::Some, ReflectRef::Enum(e)) => match e.field_at(0) {
                Some(inner) => Some(inner),
                None => return Err(Stop::None(self.prefix(before).to_string())),
            },
            (Access::Variant(name), ReflectRef::Enum(e)) => {
                if e.variant_name() == &**name {
                    Some(value)
                } else {
                    return Err(Stop::Error(format!(
                        "{}: the variant is '{}', not '{name}'",
                        self.prefix(before),
                        e.variant_name()
                    )));
                }
            }
            _ => None,
        };
        found.ok_or_else(|| Stop::Error(self.missing(value, access, i)))
    }

    /// [`walk`](Self::walk), for writing.
    pub fn walk_mut<'a>(&self, root: &'a mut dyn PartialReflect) -> Result<&'a mut dyn PartialReflect, Stop> {
        let mut value = root;
        for (i, step) in self.steps.iter().enumerate() {
            let before = if i == 0 { None } else { Some(i - 1) };
            // Checked on a shared borrow first, so the error can describe the value.
            self.step_ref(value, &step.access, before, i)?;
            value = match (&step.access, value.reflect_mut()) {
                (Access::FieldAt(n), ReflectMut::Struct(s)) => s.field_at_mut(*n),
                (Access::Field(name), ReflectMut::Struct(s)) => s.field_mut(name),
                (Access::Field(name), ReflectMut::Enum(e)) => e.field_mut(name),
                (Access::Index(n), ReflectMut::List(l)) => l.get_mut(*n),
                (Access::Index(n), ReflectMut::Array(a)) => a.get_mut(*n),
                (Access::Index(n), ReflectMut::Tuple(t)) => t.field_mut(*n),
                (Access::Index(n), ReflectMut::TupleStruct(t)) => t.field_mut(*n),
                (Access::Index(n), ReflectMut::Enum(e)) => e.field_at_mut(*n),
                (Access::Some, ReflectMut::Enum(e)) => e.field_at_mut(0),
                (Access::Variant(_), ReflectMut::Enum(e)) => Some(e.as_partial_reflect_mut()),
                _ => None,
            }
            .ok_or_else(|| Stop::Error(format!("{}: cannot be written", self.prefix(Some(i)))))?;
        }
        Ok(value)
    }

    /// `Inventory.slots[9]: no position 9 (the list has 3)`, `Transform.foo: no field 'foo'`.
    fn missing(&self, value: &dyn PartialReflect, access: &Access, i: usize) -> String {
        let at = self.prefix(Some(i));
        let len = match value.reflect_ref() {
            ReflectRef::List(l) => Some(l.len()),
            ReflectRef::Array(a) => Some(a.len()),
            ReflectRef::Tuple(t) => Some(t.field_len()),
            ReflectRef::TupleStruct(t) => Some(t.field_len()),
            ReflectRef::Enum(e) => Some(e.field_len()),
            _ => None,
        };
        match (access, len) {
            (Access::Index(n), Some(len)) => format!("{at}: no position {} (there are {len})", n + 1),
            (Access::Field(name), _) => format!("{at}: no field '{name}'"),
            _ => format!("{at}: {} has no such part", value.reflect_short_type_path()),
        }
    }
}

/// The type info of a field, from its static info or else the registry.
fn info_of(
    registry: &TypeRegistry,
    info: Option<&'static TypeInfo>,
    id: TypeId,
) -> Option<&'static TypeInfo> {
    info.or_else(|| registry.get_type_info(id))
}

fn is_option(info: &TypeInfo) -> bool {
    info.type_path().starts_with("core::option::Option<")
}

/// One segment of a path's text: a name (`.field`) or a 1-based position (`[n]`).
enum Segment<'a> {
    Name(&'a str),
    Position(usize),
}

/// A path's segments, each with the length of the path's text up to its end.
type Segments<'a> = Vec<(Segment<'a>, usize)>;

/// Splits `"Transform.translation[2].x"` into its root name and segments, each with the text
/// length up to its end.
fn segments(text: &str) -> Result<(&str, Segments<'_>), String> {
    let root_end = text.find(['.', '[']).unwrap_or(text.len());
    let root = &text[..root_end];
    if root.is_empty() {
        return Err(format!("'{text}' does not start with a type name"));
    }
    let mut out = Vec::new();
    let mut at = root_end;
    while at < text.len() {
        let rest = &text[at..];
        if let Some(name) = rest.strip_prefix('.') {
            let len = name.find(['.', '[']).unwrap_or(name.len());
            if len == 0 {
                return Err(format!("{}: a field name is missing after '.'", &text[..at + 1]));
            }
            at += 1 + len;
            out.push((Segment::Name(&name[..len]), at));
        } else if let Some(inner) = rest.strip_prefix('[') {
            let close = inner.find(']').ok_or_else(|| format!("{text}: '[' without ']'"))?;
            at += close + 2;
            let n: usize = inner[..close]
                .trim()
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("{}: positions are whole numbers from 1", &text[..at]))?;
            out.push((Segment::Position(n), at));
        } else {
            return Err(format!("{}: '.' or '[' expected", &text[..at]));
        }
    }
    Ok((root, out))
}

/// Compiles `text`, whose root is the type `root` (found by the caller from the root's name,
/// which [`root_name`] gives).
pub(crate) fn compile(text: &str, root: TypeId, registry: &TypeRegistry) -> Result<CompiledPath, String> {
    let (root_name, segs) = segments(text)?;
    let mut info = registry.get_type_info(root);
    let mut steps = Vec::with_capacity(segs.len());
    let mut prefix_end = root_name.len();
    for (segment, end) in segs {
        let prefix = &text[..prefix_end];
        let here = &text[..end];
        // An `Option` is entered before the segment that looks inside it.
        while let Some(option) = info.filter(|i| is_option(i)) {
            steps.push(Step { access: Access::Some, end: prefix_end });
            info = match option {
                TypeInfo::Enum(e) => e
                    .variant("Some")
                    .and_then(|v| v.as_tuple_variant().ok())
                    .and_then(|v| v.field_at(0))
                    .and_then(|f| info_of(registry, f.type_info(), f.type_id())),
                _ => None,
            };
        }
        let (access, next) = match (segment, info) {
            (Segment::Name(name), Some(TypeInfo::Struct(s))) => {
                let i = s.index_of(name).ok_or_else(|| format!("{here}: no field '{name}'"))?;
                let field = s.field_at(i).expect("index_of gave it");
                (Access::FieldAt(i), info_of(registry, field.type_info(), field.type_id()))
            }
            (Segment::Name(name), Some(TypeInfo::Enum(e))) => {
                if e.variant(name).is_none() {
                    return Err(format!(
                        "{here}: {} has no variant '{name}'",
                        e.type_path_table().short_path()
                    ));
                }
                // The variant's fields are found by name when walked.
                steps.push(Step { access: Access::Variant(name.into()), end });
                info = None;
                prefix_end = end;
                continue;
            }
            (Segment::Name(name), Some(TypeInfo::Opaque(o))) => {
                return Err(format!(
                    "{here}: no field '{name}' ({} has no fields)",
                    o.type_path_table().short_path()
                ));
            }
            (Segment::Name(name), None) => (Access::Field(name.into()), None),
            (Segment::Name(name), Some(_)) => {
                return Err(format!("{here}: no field '{name}' ({prefix} is not a struct)"));
            }
            (Segment::Position(n), Some(TypeInfo::Tuple(t))) => {
                let field = t
                    .field_at(n - 1)
                    .ok_or_else(|| format!("{here}: no position {n} (there are {})", t.field_len()))?;
                (Access::Index(n - 1), info_of(registry, field.type_info(), field.type_id()))
            }
            (Segment::Position(n), Some(TypeInfo::TupleStruct(t))) => {
                let field = t
                    .field_at(n - 1)
                    .ok_or_else(|| format!("{here}: no position {n} (there are {})", t.field_len()))?;
                (Access::Index(n - 1), info_of(registry, field.type_info(), field.type_id()))
            }
            (Segment::Position(n), Some(TypeInfo::Array(a))) => {
                if n > a.capacity() {
                    return Err(format!("{here}: no position {n} (there are {})", a.capacity()));
                }
                (Access::Index(n - 1), info_of(registry, a.item_info(), a.item_ty().id()))
            }
            (Segment::Position(n), Some(TypeInfo::List(l))) => {
                (Access::Index(n - 1), info_of(registry, l.item_info(), l.item_ty().id()))
            }
            (Segment::Position(n), None) => (Access::Index(n - 1), None),
            (Segment::Position(_), Some(_)) => {
                return Err(format!("{here}: {prefix} has no positions"));
            }
        };
        steps.push(Step { access, end });
        info = next;
        prefix_end = end;
    }
    let leaf = match info.map(TypeInfo::type_id) {
        Some(id) if id == TypeId::of::<f32>() => Leaf::F32,
        Some(id) if id == TypeId::of::<f64>() => Leaf::F64,
        Some(id) => Kind::of(id).map_or(Leaf::Other, Leaf::Vector),
        None => Leaf::Other,
    };
    Ok(CompiledPath {
        text: text.into(),
        root_len: root_name.len(),
        type_id: root,
        steps,
        leaf,
        component: None,
        component_id: None,
        resource: false,
        mutable: true,
        typed: Typed::of(root, &text[root_name.len()..]),
    })
}

/// The root name of a path (`Transform` in `Transform.translation.x`).
pub(crate) fn root_name(text: &str) -> &str {
    &text[..text.find(['.', '[']).unwrap_or(text.len())]
}

/// The compiled paths of one VM (app data), by the number the Lua side caches per path string.
#[derive(Default)]
pub(crate) struct Paths {
    pub list: Vec<CompiledPath>,
    pub by_text: HashMap<Box<str>, usize>,
}

impl Paths {
    /// Keeps `path`; returns its number. Past [`MAX_CACHED`] paths, one spare slot is reused
    /// (the Lua side does not cache numbers from [`MAX_CACHED`] on).
    pub fn insert(&mut self, path: CompiledPath) -> usize {
        let id = self.list.len().min(MAX_CACHED);
        if id < MAX_CACHED {
            self.by_text.insert(path.text.clone(), id);
            self.list.push(path);
        } else if self.list.len() > MAX_CACHED {
            self.list[MAX_CACHED] = path;
        } else {
            self.list.push(path);
        }
        id
    }
}
