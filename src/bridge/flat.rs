//! Flat conversion of plain structs for typed channels: a value whose type is a struct (possibly
//! nested) of numbers, booleans and strings crosses between Rust and Lua as its leaves, in field
//! order. Rust builds the tables of a batch of values in one protected call of raw C API writes
//! (`super::leaves::write`), and a Lua function generated once per type checks and flattens what
//! scripts send. That moves a batch of values in one call each way instead of one serde walk (and,
//! under a memory limit, one protected call per table and field) per value.
//!
//! Both directions give exactly what mlua's serde conversion gives, or are not used: a type whose
//! shape this module cannot describe, or a value that does not fit the shape a script-side check
//! can prove, goes through mlua's serde as before (so errors keep their field paths).
//!
//! - Rust → script: [`serialize`] appends a value's leaves (converted as mlua's `to_value` converts
//!   them) and how its tables nest to a [`Values`], from which `super::leaves::write` builds them.
//! - Script → Rust: [`trace`] learns a type's shape from its `Deserialize` (fed placeholder
//!   leaves), [`flattener`] makes the Lua check that copies a table's leaves into a buffer (Lua
//!   5.4 runs `super::gather`'s C check of the same shape instead), and
//!   [`from_leaves`] rebuilds the value from them as `super::leaves` read them out of that buffer.

use std::fmt::{self, Display, Write as _};

use mlua::{Function, IntoLua, Lua, Value};

use super::leaves::{MAX_KEYS, Op, OutLeaf, RawLeaf, Values};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};
use serde::ser::{self, Impossible, Serialize};

/// Most leaves and tables one generated check reads (a Lua function has at most 200 locals).
const MAX_LEAVES: usize = 180;

/// A leaf of a flat shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Leaf {
    Bool,
    /// An integer type and its range (as Lua integers: `u64` stops at `i64::MAX`).
    Int {
        min: i64,
        max: i64,
    },
    Float,
    Str,
}

/// The shape of a type: a leaf, or a struct of named fields.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    Leaf(Leaf),
    Struct(Vec<(&'static str, Shape)>),
}

impl Shape {
    /// How many leaves a value of this shape has.
    pub(crate) fn leaves(&self) -> usize {
        match self {
            Shape::Leaf(_) => 1,
            Shape::Struct(fields) => fields.iter().map(|(_, s)| s.leaves()).sum(),
        }
    }

    /// How many tables a value of this shape has.
    fn tables(&self) -> usize {
        match self {
            Shape::Leaf(_) => 0,
            Shape::Struct(fields) => 1 + fields.iter().map(|(_, s)| s.tables()).sum::<usize>(),
        }
    }
}

/// The shape cannot be described (or a value does not fit it).
#[derive(Debug)]
pub(crate) struct Unsupported;

impl Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a flat struct")
    }
}

impl std::error::Error for Unsupported {}

impl de::Error for Unsupported {
    fn custom<T: Display>(_: T) -> Self {
        Unsupported
    }
}

impl ser::Error for Unsupported {
    fn custom<T: Display>(_: T) -> Self {
        Unsupported
    }
}

/// Whether `name` can stand in a generated `["name"]` as it is.
fn plain_name(name: &str) -> bool {
    name.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

// ---------------------------------------------------------------------------------------------
// Tracing a type's shape from its `Deserialize`
// ---------------------------------------------------------------------------------------------

/// The shape `T`'s `Deserialize` asks for, if it is a (nested) struct of numbers, booleans and
/// strings with plain field names and at most [`MAX_LEAVES`] leaves; `None` otherwise (options,
/// sequences, maps, enums, a hand-written impl that asks for anything else or rejects the
/// placeholder values).
pub(crate) fn trace<T: DeserializeOwned>() -> Option<Shape> {
    let mut out = None;
    T::deserialize(Tracer::<Unsupported>::new(&mut out, false)).ok()?;
    let shape = out?;
    (shape.leaves() + shape.tables() <= MAX_LEAVES && shape.leaves() > 0).then_some(shape)
}

/// Whether a struct in `T`'s (traced) shape rejects fields it does not know
/// (`#[serde(deny_unknown_fields)]`): asks it to read a map with one key no field has.
pub(crate) fn denies_unknown_fields<T: DeserializeOwned>() -> bool {
    let mut out = None;
    matches!(T::deserialize(Tracer::<Probe>::new(&mut out, true)), Err(Probe::UnknownField))
}

/// What a probe for unknown fields ends with.
#[derive(Debug)]
enum Probe {
    UnknownField,
    Other,
}

impl Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for Probe {}

impl de::Error for Probe {
    fn custom<T: Display>(_: T) -> Self {
        Probe::Other
    }

    fn unknown_field(_: &str, _: &'static [&'static str]) -> Self {
        Probe::UnknownField
    }
}

/// The key the probe offers first, which no field is named.
const PROBE_KEY: &str = "\u{1}bevy_lua_coroutines probe";

/// A deserializer that records what is asked of it and answers with placeholder leaves. With
/// `probe`, a struct is offered as a map whose first key is [`PROBE_KEY`].
struct Tracer<'s, E> {
    out: &'s mut Option<Shape>,
    probe: bool,
    _error: std::marker::PhantomData<E>,
}

impl<'s, E> Tracer<'s, E> {
    fn new(out: &'s mut Option<Shape>, probe: bool) -> Self {
        Self { out, probe, _error: std::marker::PhantomData }
    }
}

macro_rules! trace_int {
    ($($method:ident $t:ty, $visit:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
            *self.out = Some(Shape::Leaf(Leaf::Int { min: <$t>::MIN as i64, max: (<$t>::MAX as u64).min(i64::MAX as u64) as i64 }));
            visitor.$visit(0)
        }
    )*};
}

impl<'de, E: de::Error> de::Deserializer<'de> for Tracer<'_, E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, E> {
        Err(E::custom("not a flat struct"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        if self.probe { visitor.visit_unit() } else { Err(E::custom("not a flat struct")) }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        *self.out = Some(Shape::Leaf(Leaf::Bool));
        visitor.visit_bool(false)
    }

    trace_int! {
        deserialize_i8 i8, visit_i64;
        deserialize_i16 i16, visit_i64;
        deserialize_i32 i32, visit_i64;
        deserialize_i64 i64, visit_i64;
        deserialize_u8 u8, visit_u64;
        deserialize_u16 u16, visit_u64;
        deserialize_u32 u32, visit_u64;
        deserialize_u64 u64, visit_u64;
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        *self.out = Some(Shape::Leaf(Leaf::Float));
        visitor.visit_f64(0.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        *self.out = Some(Shape::Leaf(Leaf::Float));
        visitor.visit_f64(0.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        *self.out = Some(Shape::Leaf(Leaf::Str));
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, E> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        if !fields.iter().all(|f| plain_name(f)) {
            return Err(E::custom("not a flat struct"));
        }
        if self.probe {
            return visitor.visit_map(ProbeFields { fields, next: None, _error: self._error });
        }
        let mut children = Vec::with_capacity(fields.len());
        let value =
            visitor.visit_seq(TraceFields { fields, children: &mut children, _error: self._error })?;
        if children.len() != fields.len() {
            return Err(E::custom("not a flat struct"));
        }
        *self.out = Some(Shape::Struct(children));
        Ok(value)
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf option unit unit_struct seq tuple tuple_struct map enum
        identifier
    }
}

/// The fields of a traced struct, asked for in order.
struct TraceFields<'s, E> {
    fields: &'static [&'static str],
    children: &'s mut Vec<(&'static str, Shape)>,
    _error: std::marker::PhantomData<E>,
}

impl<'de, E: de::Error> de::SeqAccess<'de> for TraceFields<'_, E> {
    type Error = E;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, E> {
        let Some(&name) = self.fields.get(self.children.len()) else { return Ok(None) };
        let mut out = None;
        let value = seed.deserialize(Tracer::<E>::new(&mut out, false))?;
        self.children.push((name, out.ok_or_else(|| E::custom("not a flat struct"))?));
        Ok(Some(value))
    }
}

/// A probed struct as a map: [`PROBE_KEY`] first, then every field.
struct ProbeFields<E> {
    fields: &'static [&'static str],
    /// The index of the field given last (`None`: the probe key is next).
    next: Option<usize>,
    _error: std::marker::PhantomData<E>,
}

impl<'de, E: de::Error> de::MapAccess<'de> for ProbeFields<E> {
    type Error = E;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, E> {
        let key = match self.next {
            None => PROBE_KEY,
            Some(i) => match self.fields.get(i) {
                Some(name) => name,
                None => return Ok(None),
            },
        };
        self.next = Some(self.next.map_or(0, |i| i + 1));
        seed.deserialize(de::value::BorrowedStrDeserializer::<E>::new(key)).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, E> {
        let mut out = None;
        seed.deserialize(Tracer::<E>::new(&mut out, true))
    }
}

// ---------------------------------------------------------------------------------------------
// Script -> Rust: the Lua check and the value from its leaves
// ---------------------------------------------------------------------------------------------

/// Lua source of the check for one leaf `x` (true when it does not fit for sure).
fn leaf_misfit(leaf: Leaf, x: &str) -> String {
    match leaf {
        Leaf::Bool => format!("type({x}) ~= \"boolean\""),
        Leaf::Float => format!("type({x}) ~= \"number\""),
        // A string `ascii` knows needs no `type` call.
        Leaf::Str => format!("not ascii[{x}] and (type({x}) ~= \"string\" or nonascii({x}))"),
        Leaf::Int { min, max } if cfg!(feature = "lua54") => {
            let mut s = format!("math_type({x}) ~= \"integer\"");
            if min != i64::MIN {
                let _ = write!(s, " or {x} < {min}");
            }
            if max != i64::MAX {
                let _ = write!(s, " or {x} > {max}");
            }
            s
        }
        // Numbers are doubles: mlua makes an integer of one that is integral, in range and not -0.
        Leaf::Int { min, max } => {
            let lo = if min == i64::MIN { String::from("-9223372036854775808") } else { min.to_string() };
            let hi =
                if max == i64::MAX { format!("{x} >= 9223372036854775808") } else { format!("{x} > {max}") };
            format!(
                "type({x}) ~= \"number\" or {x} % 1 ~= 0 or {x} < {lo} or {hi} or ({x} == 0 and 1 / {x} < 0)"
            )
        }
    }
}

/// Emits the checks of the table `t` (of shape `fields`) into `body`, naming leaves `x1...` in
/// order (`leaves` counts them) and tables `t1...` (`tables` counts them).
fn emit_checks(
    fields: &[(&'static str, Shape)],
    t: &str,
    count_keys: bool,
    body: &mut String,
    leaves: &mut usize,
    tables: &mut usize,
) {
    let _ = writeln!(body, "  if type({t}) ~= \"table\" or getmetatable({t}) ~= nil then return nil end");
    for (name, shape) in fields {
        match shape {
            Shape::Leaf(leaf) => {
                *leaves += 1;
                let x = format!("x{leaves}");
                let _ = writeln!(body, "  local {x} = {t}[\"{name}\"]");
                let _ = writeln!(body, "  if {} then return nil end", leaf_misfit(*leaf, &x));
            }
            Shape::Struct(inner) => {
                *tables += 1;
                let u = format!("t{tables}");
                let _ = writeln!(body, "  local {u} = {t}[\"{name}\"]");
                emit_checks(inner, &u, count_keys, body, leaves, tables);
            }
        }
    }
    // Every field is there and not nil: one more key would be a field the type does not have,
    // which matters only to a type that rejects unknown fields.
    if !count_keys {
        return;
    }
    let _ = writeln!(
        body,
        "  do local c = 0 for _ in next, {t} do c = c + 1 end if c ~= {} then return nil end end",
        fields.len()
    );
}

/// Lua source of `nonascii(x)` (whether string `x` has a non-ASCII byte) and `ascii`, the short
/// strings it found ASCII lately: most strings a game sends repeat (kinds, names), and a table
/// lookup costs far less than `string.find`'s C call. At most 256 strings of at most 64 bytes.
const ASCII_CACHE: &str = "local ascii, cached = {}, 0
local function nonascii(x)
  if find(x, \"[\\128-\\255]\") then return true end
  if #x <= 64 then
    if cached >= 256 then ascii, cached = {}, 0 end
    ascii[x] = true
    cached = cached + 1
  end
  return false
end";

/// Makes the Lua function `flatten(v, buf, n) -> n'` for `shape`: when `v` surely converts to the
/// traced type exactly as mlua's serde would convert it (right types, integers in range and
/// integral, ASCII strings, no metatables; with `count_keys`, no extra keys), it stores `v`'s
/// leaves at `buf[n + 1]...` and returns the new count; otherwise it returns nil and stores nothing.
pub(crate) fn flattener(lua: &Lua, shape: &Shape, count_keys: bool) -> mlua::Result<Function> {
    let mut body = String::new();
    let (mut leaves, mut tables) = (0, 0);
    match shape {
        Shape::Leaf(leaf) => {
            leaves = 1;
            let _ = writeln!(body, "  local x1 = v\n  if {} then return nil end", leaf_misfit(*leaf, "x1"));
        }
        Shape::Struct(fields) => emit_checks(fields, "v", count_keys, &mut body, &mut leaves, &mut tables),
    }
    let targets: Vec<String> = (1..=leaves).map(|i| format!("b[n + {i}]")).collect();
    let values: Vec<String> = (1..=leaves).map(|i| format!("x{i}")).collect();
    let source = format!(
        "local type, getmetatable, next, find, math_type = type, getmetatable, next, string.find, math.type\n\
         {ASCII_CACHE}\n\
         return function(v, b, n)\n{body}  {} = {}\n  return n + {leaves}\nend",
        targets.join(", "),
        values.join(", ")
    );
    lua.load(source).set_name("=bevy_lua_coroutines/flatten").eval()
}

/// Rebuilds a `T` from the leaves of one value that its [`flattener`] accepted (`bytes` holds
/// their strings).
pub(crate) fn from_leaves<T: DeserializeOwned>(leaves: &[RawLeaf], bytes: &[u8]) -> Result<T, Unsupported> {
    let mut pos = 0;
    T::deserialize(LeafReader { leaves, bytes, pos: &mut pos })
}

/// A deserializer over a run of leaves, taken in order.
struct LeafReader<'a, 'p> {
    leaves: &'a [RawLeaf],
    bytes: &'a [u8],
    pos: &'p mut usize,
}

impl<'de> de::Deserializer<'de> for LeafReader<'_, '_> {
    type Error = Unsupported;

    /// Visits the next leaf as mlua's deserializer visits that value.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        let leaf = self.leaves.get(*self.pos).ok_or(Unsupported)?;
        *self.pos += 1;
        match leaf {
            RawLeaf::Bool(b) => visitor.visit_bool(*b),
            RawLeaf::Int(i) => visitor.visit_i64(*i),
            RawLeaf::Num(n) => visitor.visit_f64(*n),
            RawLeaf::Str(r) => {
                let s = self.bytes.get(r.clone()).ok_or(Unsupported)?;
                visitor.visit_str(std::str::from_utf8(s).map_err(|_| Unsupported)?)
            }
            RawLeaf::Other => Err(Unsupported),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        visitor.visit_seq(LeafFields {
            leaves: self.leaves,
            bytes: self.bytes,
            pos: self.pos,
            left: fields.len(),
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The fields of a struct read from leaves.
struct LeafFields<'a, 'p> {
    leaves: &'a [RawLeaf],
    bytes: &'a [u8],
    pos: &'p mut usize,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for LeafFields<'_, '_> {
    type Error = Unsupported;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Unsupported> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(LeafReader { leaves: self.leaves, bytes: self.bytes, pos: self.pos }).map(Some)
    }
}

// Rust -> script: leaves and how their tables nest
// ---------------------------------------------------------------------------------------------

/// Appends `value` to `out` (its leaves, each as mlua's `to_value` makes it, and how its tables
/// nest; `super::leaves::write` builds them). Fails, and leaves `out` as it was, for anything but
/// (nested) structs of numbers, booleans, strings and chars, or when the keys of `out` would pass
/// [`MAX_KEYS`].
pub(crate) fn serialize<T: Serialize>(lua: &Lua, value: &T, out: &mut Values) -> Result<(), Unsupported> {
    let (ops, leaves, bytes, keys) = (out.ops.len(), out.leaves.len(), out.bytes.len(), out.keys.len());
    let mut writer = LeafWriter { lua, out, depth: 0 };
    let r = value.serialize(&mut writer);
    if r.is_err() {
        out.ops.truncate(ops);
        out.leaves.truncate(leaves);
        out.bytes.truncate(bytes);
        out.keys.truncate(keys);
    }
    r
}

/// A serializer appending to [`Values`].
struct LeafWriter<'a> {
    lua: &'a Lua,
    out: &'a mut Values,
    /// Tables open now.
    depth: usize,
}

impl LeafWriter<'_> {
    fn leaf(&mut self, v: impl IntoLua) -> Result<(), Unsupported> {
        let leaf = match v.into_lua(self.lua).map_err(|_| Unsupported)? {
            Value::Boolean(b) => OutLeaf::Bool(b),
            Value::Integer(i) => OutLeaf::Int(i),
            Value::Number(n) => OutLeaf::Num(n),
            _ => return Err(Unsupported),
        };
        self.out.push(leaf);
        Ok(())
    }

    fn string(&mut self, v: &str) {
        self.out.push_str(v.as_bytes());
    }

    /// The index of `key` in the keys, added on first sight.
    fn key(&mut self, key: &'static str) -> Result<u32, Unsupported> {
        let (keys, guess) = (&mut self.out.keys, self.out.next_key);
        // The same field is the same `&'static str`, and fields come in the same order value after
        // value: most lookups end at the guess (the key after the last one found).
        let found = if keys.get(guess).is_some_and(|k| std::ptr::eq(*k, key)) {
            Some(guess)
        } else {
            keys.iter().position(|k| std::ptr::eq(*k, key)).or_else(|| keys.iter().position(|k| *k == key))
        };
        let i = match found {
            Some(i) => i,
            None if keys.len() < MAX_KEYS => {
                keys.push(key);
                keys.len() - 1
            }
            None => return Err(Unsupported),
        };
        self.out.next_key = if i + 1 < keys.len() { i + 1 } else { 0 };
        Ok(i as u32)
    }
}

macro_rules! write_leaf {
    ($($method:ident $t:ty;)*) => {$(
        fn $method(self, v: $t) -> Result<(), Unsupported> {
            self.leaf(v)
        }
    )*};
}

impl<'w, 'a> ser::Serializer for &'w mut LeafWriter<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Impossible<(), Unsupported>;
    type SerializeTuple = Impossible<(), Unsupported>;
    type SerializeTupleStruct = Impossible<(), Unsupported>;
    type SerializeTupleVariant = Impossible<(), Unsupported>;
    type SerializeMap = Impossible<(), Unsupported>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), Unsupported>;

    write_leaf! {
        serialize_bool bool; serialize_i8 i8; serialize_i16 i16; serialize_i32 i32; serialize_i64 i64;
        serialize_u8 u8; serialize_u16 u16; serialize_u32 u32; serialize_u64 u64;
        serialize_f32 f32; serialize_f64 f64;
    }

    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        self.string(v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        self.string(v);
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_none(self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_unit(self) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        Err(Unsupported)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }

    /// A table presized for `len` fields, as mlua's `to_value` makes it.
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<Self, Unsupported> {
        self.out.ops.push(Op::Open(len.min(u32::MAX as usize) as u32));
        self.depth += 1;
        self.out.depth = self.out.depth.max(self.depth);
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

impl ser::SerializeStruct for &mut LeafWriter<'_> {
    type Ok = ();
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), Unsupported> {
        let k = self.key(key)?;
        self.out.ops.push(Op::Key(k));
        v.serialize(&mut **self)
    }

    fn end(self) -> Result<(), Unsupported> {
        self.out.ops.push(Op::Close);
        self.depth -= 1;
        Ok(())
    }
}
