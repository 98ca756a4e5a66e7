//! When a Lua table is a list to Rust: the one rule every conversion from Lua into a Rust
//! sequence follows before it trusts `#t`.
//!
//! A table with holes may report any border as its length: Lua 5.4 says 2^40 for a table of 41
//! values at 1 to 5 and the powers of two. Code that reads `1..=#t` from Rust (a reflected list
//! field, or serde's sequence reader, which reads on through `nil` up to the length it was given)
//! would size a `Vec` or loop that far before a value is read, outside any instruction budget or
//! memory limit. So a length counts only when the table holds at least about half of the
//! positions it claims: `2 * values + SLACK >= #t`. A list built by a script (`{...}`,
//! `table.insert`, `t[#t + 1] = v`, a few `nil`s set in it) always passes.

use std::collections::HashSet;
use std::ffi::c_void;

use mlua::{Table, Value};

/// Lengths up to this are trusted without counting.
const SLACK: usize = 16;

/// A table whose length claims far more positions than it holds values.
#[derive(Debug)]
pub(crate) struct NotAList {
    /// What `#t` said.
    pub(crate) len: usize,
    /// How many values the table holds.
    pub(crate) count: usize,
}

impl std::fmt::Display for NotAList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a list: its length reads {} but it holds {} values", self.len, self.count)
    }
}

/// The length of the list in `t` (raw, as `#t` without `__len`), or why it is not one. Counts
/// the table's entries only when the length is over [`SLACK`], and stops as soon as there are
/// enough.
pub(crate) fn list_len(t: &Table) -> mlua::Result<Result<usize, NotAList>> {
    let len = t.raw_len();
    if len <= SLACK {
        return Ok(Ok(len));
    }
    let mut count = 0usize;
    for pair in t.pairs::<Value, Value>() {
        pair?;
        count += 1;
        if 2 * count + SLACK >= len {
            return Ok(Ok(len));
        }
    }
    Ok(Err(NotAList { len, count }))
}

/// Checks every table reachable from `value` (each once, however often it is reached) against
/// the list rule, before serde reads `value` into a Rust type: serde cannot be told which tables
/// it will read as sequences. The error names where the table sits (`at items.3: not a list:
/// ...`), as serde's own errors do.
pub(crate) fn check_tree(value: &Value) -> Result<(), String> {
    let Value::Table(root) = value else { return Ok(()) };
    // Each table met, with where it was met from (its parent's index and the key), so a path
    // is only spelled out for an error.
    let mut met: Vec<(Table, usize, Value)> = vec![(root.clone(), usize::MAX, Value::Nil)];
    let mut seen: HashSet<*const c_void> = HashSet::from([root.to_pointer()]);
    let mut next = 0;
    while next < met.len() {
        let t = met[next].0.clone();
        let found = list_len(&t).map_err(|e| e.to_string())?;
        if let Err(not_a_list) = found {
            return Err(at(&met, next, not_a_list));
        }
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair.map_err(|e| e.to_string())?;
            if let Value::Table(child) = v
                && seen.insert(child.to_pointer())
            {
                met.push((child, next, k));
            }
        }
        next += 1;
    }
    Ok(())
}

/// `at a.b.3: <problem>` for the table at `met[index]`, or the bare problem at the root.
fn at(met: &[(Table, usize, Value)], mut index: usize, problem: NotAList) -> String {
    let mut keys = Vec::new();
    while index != 0 {
        let (_, parent, key) = &met[index];
        keys.push(match key {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(i) => i.to_string(),
            other => other.type_name().to_string(),
        });
        index = *parent;
    }
    if keys.is_empty() {
        return problem.to_string();
    }
    keys.reverse();
    format!("at {}: {problem}", keys.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    /// 43 values at 1 to 5 and the powers of two up to 2^40, made by one constructor: Lua 5.4
    /// reads its length as 2^40.
    fn sparse(lua: &Lua) -> Table {
        let powers: String = (3..=40).map(|k| format!(", [{}] = 1", 1u64 << k)).collect();
        lua.load(format!("return {{ 1, 2, 3, 4, [5] = 5{powers} }}")).eval().unwrap()
    }

    #[test]
    fn a_list_built_by_a_script_passes_and_a_sparse_one_does_not() {
        let lua = Lua::new();
        let list: Table =
            lua.load("local t = {} for i = 1, 100 do t[i] = i end t[50] = nil return t").eval().unwrap();
        assert_eq!(list_len(&list).unwrap().unwrap(), 100);
        let found = list_len(&sparse(&lua)).unwrap();
        if cfg!(feature = "lua54") {
            let err = found.unwrap_err();
            assert_eq!((err.len, err.count), (1 << 40, 43));
        }
    }

    #[test]
    fn a_tree_check_names_where_the_sparse_table_sits_and_meets_each_table_once() {
        let lua = Lua::new();
        let wrap: mlua::Function = lua
            .load("return function(t) local r = {items = {{}, {}, {inner = t}}} r.self = r r.again = r.items return r end")
            .eval()
            .unwrap();
        let fine: Table = wrap.call(lua.create_sequence_from(1..=100).unwrap()).unwrap();
        assert_eq!(check_tree(&Value::Table(fine)), Ok(()));
        let root: Table = wrap.call(sparse(&lua)).unwrap();
        let err = check_tree(&Value::Table(root));
        if cfg!(feature = "lua54") {
            let err = err.unwrap_err();
            // (Reached as `items` and as `again`: whichever the walk met first names it.)
            let named = err.starts_with("at items.3.inner: ") || err.starts_with("at again.3.inner: ");
            assert!(named && err.contains(": not a list: its length reads 1099511627776"), "{err}");
        }
    }
}
