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

use std::collections::HashMap;
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

/// Steps of the instruction budget one table entry the check walks costs: walking an entry
/// through mlua costs what a few dozen VM instructions do.
pub(crate) const STEPS_PER_ENTRY: u64 = 32;

/// The most table visits serde may make reading one value: it reads a table reached by two
/// paths twice (it only refuses a table inside itself), so 40 tables that each hold the next
/// twice are 2^40 visits.
const MAX_VISITS: u64 = 1 << 20;

/// Checks every table reachable from `value`, as a value or as a key (each once, however often
/// it is reached), against the list rule, before serde reads `value` into a Rust type: serde
/// cannot be told which tables it will read as sequences. Also refuses a value serde would visit
/// more than [`MAX_VISITS`] tables of, counting a table once for every path to it. The walk is
/// charged to the running resume's budget (`charge(steps)`, which fails once it is spent). The
/// error names where the table sits (`at items.3: not a list: ...`), as serde's own errors do.
pub(crate) fn check_tree(
    value: &Value,
    charge: &mut dyn FnMut(u64) -> Result<(), String>,
) -> Result<(), String> {
    let Value::Table(root) = value else { return Ok(()) };
    // Each table met, with where it was met from (its parent's index and the key), so a path
    // is only spelled out for an error; and the tables each holds, by index, once per reference.
    let mut met: Vec<(Table, usize, Value)> = vec![(root.clone(), usize::MAX, Value::Nil)];
    let mut children: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<*const c_void, usize> = HashMap::from([(root.to_pointer(), 0)]);
    let mut next = 0;
    while next < met.len() {
        let t = met[next].0.clone();
        let found = list_len(&t).map_err(|e| e.to_string())?;
        if let Err(not_a_list) = found {
            return Err(at(&met, next, not_a_list));
        }
        let mut held = Vec::new();
        let mut entries = 0u64;
        for pair in t.pairs::<Value, Value>() {
            let (k, v) = pair.map_err(|e| e.to_string())?;
            entries += 1;
            if entries.is_multiple_of(256) {
                charge(256 * STEPS_PER_ENTRY)?;
            }
            for (child, key) in [(&k, &k), (&v, &k)] {
                if let Value::Table(child) = child {
                    let i = *index.entry(child.to_pointer()).or_insert_with(|| {
                        met.push((child.clone(), next, key.clone()));
                        met.len() - 1
                    });
                    held.push(i);
                }
            }
        }
        charge((entries % 256 + 1) * STEPS_PER_ENTRY)?;
        children.push(held);
        next += 1;
    }
    if visits(&children) > MAX_VISITS {
        return Err(format!(
            "a table reached by too many paths: reading it would visit over {MAX_VISITS} tables"
        ));
    }
    Ok(())
}

/// How many tables serde visits reading the table at index 0 of `children` (each table's
/// children by index, once per reference), counting a table once per path to it, up to just
/// over [`MAX_VISITS`]. A table met again inside itself counts once: serde stops there.
fn visits(children: &[Vec<usize>]) -> u64 {
    const UNSEEN: u64 = u64::MAX;
    const ON_PATH: u64 = u64::MAX - 1;
    let mut size = vec![UNSEEN; children.len()];
    // Depth first, without recursion: (table, how many of its children are done).
    let mut stack = vec![(0usize, 0usize)];
    size[0] = ON_PATH;
    while let Some(&mut (t, ref mut done)) = stack.last_mut() {
        if let Some(&c) = children[t].get(*done) {
            *done += 1;
            if size[c] == UNSEEN {
                size[c] = ON_PATH;
                stack.push((c, 0));
            }
            continue;
        }
        let total = children[t].iter().fold(1u64, |sum, &c| {
            let s = if size[c] == ON_PATH { 1 } else { size[c] };
            sum.saturating_add(s).min(MAX_VISITS + 1)
        });
        size[t] = total;
        stack.pop();
    }
    size[0]
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
        let mut free = |_| Ok(());
        assert_eq!(check_tree(&Value::Table(fine), &mut free), Ok(()));
        let root: Table = wrap.call(sparse(&lua)).unwrap();
        let err = check_tree(&Value::Table(root), &mut free);
        if cfg!(feature = "lua54") {
            let err = err.unwrap_err();
            // (Reached as `items` and as `again`: whichever the walk met first names it.)
            let named = err.starts_with("at items.3.inner: ") || err.starts_with("at again.3.inner: ");
            assert!(named && err.contains(": not a list: its length reads 1099511627776"), "{err}");
        }
    }

    #[test]
    fn a_table_reached_by_exponentially_many_paths_is_refused_and_a_shared_one_is_not() {
        let lua = Lua::new();
        let mut free = |_| Ok(());
        let shared: Table =
            lua.load("local p = {1} local t = {} for i = 1, 1000 do t[i] = p end return t").eval().unwrap();
        assert_eq!(check_tree(&Value::Table(shared), &mut free), Ok(()));
        let doubled: Table =
            lua.load("local t = {1} for i = 1, 40 do t = {t, t} end return t").eval().unwrap();
        let err = check_tree(&Value::Table(doubled), &mut free).unwrap_err();
        assert!(err.starts_with("a table reached by too many paths"), "{err}");
        let cyclic: Table = lua.load("local t = {} t[1] = t t.again = t return t").eval().unwrap();
        assert_eq!(check_tree(&Value::Table(cyclic), &mut free), Ok(()));
    }

    #[test]
    fn tables_used_as_keys_are_checked_and_the_walk_is_charged() {
        let lua = Lua::new();
        let wrap: mlua::Function =
            lua.load("return function(t) return { extra = { [t] = true } } end").eval().unwrap();
        let mut charged = 0;
        let mut count = |steps| {
            charged += steps;
            Ok(())
        };
        let err = check_tree(&Value::Table(wrap.call(sparse(&lua)).unwrap()), &mut count);
        if cfg!(feature = "lua54") {
            assert!(err.unwrap_err().contains("not a list"));
        }
        assert!(charged >= 3 * STEPS_PER_ENTRY, "{charged}");
        let mut spent = |_| Err::<(), _>(String::from("spent"));
        let big: Table = lua.load("local t = {} for i = 1, 1000 do t[i] = i end return t").eval().unwrap();
        assert_eq!(check_tree(&Value::Table(big), &mut spent), Err(String::from("spent")));
    }
}
