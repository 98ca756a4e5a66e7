//! Lua's string patterns, matched in Rust so that the work counts against the instruction budget.
//!
//! The C matcher of every flavour runs no hook: `string.find(string.rep("a", 1e5), ".-.-.-.-b")`
//! would run for hours inside one call. This is a port of Lua 5.4's matcher (`lstrlib.c`: the same
//! classes, captures, `%b`, `%f`, back-references and errors) that counts its steps (each attempt
//! to match at a position, each character an expansion or a `%b` scans, each plain comparison)
//! and charges them to the running resume, one step for one instruction. `string.find`,
//! `string.match`, `string.gmatch` and `string.gsub` scripts see are built on it (`lua/strings.lua`),
//! with Lua 5.4's semantics under every flavour.

use mlua::{LightUserData, Lua, MultiValue, Value};

/// Captures a pattern may have (Lua's `LUA_MAXCAPTURES`).
const MAX_CAPTURES: usize = 32;
/// Nesting of the matcher's recursion (Lua's `MAXCCALLS`).
const MAX_DEPTH: usize = 200;
const CAP_UNFINISHED: isize = -1;
const CAP_POSITION: isize = -2;
const ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Charges matching steps to the running resume; fails with the message to raise when the
/// budget is spent.
pub(crate) type Charge<'c> = &'c mut dyn FnMut(u64) -> Result<(), String>;

/// Steps counted before they are charged.
const CHUNK: u64 = 1024;

struct Matcher<'a, 'c> {
    src: &'a [u8],
    pat: &'a [u8],
    level: usize,
    capture: [(usize, isize); MAX_CAPTURES],
    depth: usize,
    steps: u64,
    charge: Charge<'c>,
}

type Res<T> = Result<T, String>;

fn class_matches(c: u8, class: u8) -> bool {
    let yes = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => c.is_ascii_whitespace() || c == 0x0b,
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return class == c,
    };
    if class.is_ascii_uppercase() { !yes } else { yes }
}

impl Matcher<'_, '_> {
    /// The pattern byte at `i`, or 0 past its end (as C reads the terminating NUL).
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    fn tick(&mut self, n: u64) -> Res<()> {
        self.steps += n;
        if self.steps >= CHUNK {
            let steps = std::mem::take(&mut self.steps);
            (self.charge)(steps)?;
        }
        Ok(())
    }

    fn class_end(&self, mut p: usize) -> Res<usize> {
        let c = self.pat[p];
        p += 1;
        if c == ESC {
            if p >= self.pat.len() {
                return Err("malformed pattern (ends with '%')".into());
            }
            return Ok(p + 1);
        }
        if c == b'[' {
            if self.p(p) == b'^' {
                p += 1;
            }
            loop {
                if p >= self.pat.len() {
                    return Err("malformed pattern (missing ']')".into());
                }
                let cc = self.pat[p];
                p += 1;
                if cc == ESC && p < self.pat.len() {
                    p += 1;
                }
                if self.p(p) == b']' {
                    break;
                }
            }
            return Ok(p + 1);
        }
        Ok(p)
    }

    /// Whether `c` is in the class `[...]` from `p` (the `[`) to `ec` (the `]`).
    fn bracket_matches(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if self.pat[p] == ESC {
                p += 1;
                if class_matches(c, self.p(p)) {
                    return sig;
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.pat[p - 2] <= c && c <= self.pat[p] {
                    return sig;
                }
            } else if self.pat[p] == c {
                return sig;
            }
        }
        !sig
    }

    fn single_matches(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.src.get(s) else { return false };
        match self.pat[p] {
            b'.' => true,
            ESC => class_matches(c, self.p(p + 1)),
            b'[' => self.bracket_matches(c, p, ep - 1),
            pc => pc == c,
        }
    }

    fn do_match(&mut self, mut s: usize, mut p: usize) -> Res<Option<usize>> {
        if self.depth == 0 {
            return Err("pattern too complex".into());
        }
        self.depth -= 1;
        let result = loop {
            self.tick(1)?;
            if p >= self.pat.len() {
                break Some(s);
            }
            match self.pat[p] {
                b'(' => {
                    break if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, CAP_POSITION)?
                    } else {
                        self.start_capture(s, p + 1, CAP_UNFINISHED)?
                    };
                }
                b')' => break self.end_capture(s, p + 1)?,
                b'$' if p + 1 == self.pat.len() => break (s == self.src.len()).then_some(s),
                ESC if self.p(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(e) => {
                        s = e;
                        p += 4;
                        continue;
                    }
                    None => break None,
                },
                ESC if self.p(p + 1) == b'f' => {
                    p += 2;
                    if self.p(p) != b'[' {
                        return Err("missing '[' after '%f' in pattern".into());
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    let current = self.src.get(s).copied().unwrap_or(0);
                    if !self.bracket_matches(previous, p, ep - 1) && self.bracket_matches(current, p, ep - 1)
                    {
                        p = ep;
                        continue;
                    }
                    break None;
                }
                ESC if self.p(p + 1).is_ascii_digit() => match self.match_capture(s, self.p(p + 1))? {
                    Some(e) => {
                        s = e;
                        p += 2;
                        continue;
                    }
                    None => break None,
                },
                _ => {
                    let ep = self.class_end(p)?;
                    let next = self.p(ep);
                    if !self.single_matches(s, p, ep) {
                        if next == b'*' || next == b'?' || next == b'-' {
                            p = ep + 1;
                            continue;
                        }
                        break None;
                    }
                    match next {
                        b'?' => match self.do_match(s + 1, ep + 1)? {
                            Some(e) => break Some(e),
                            None => {
                                p = ep + 1;
                                continue;
                            }
                        },
                        b'+' => break self.max_expand(s + 1, p, ep)?,
                        b'*' => break self.max_expand(s, p, ep)?,
                        b'-' => break self.min_expand(s, p, ep)?,
                        _ => {
                            s += 1;
                            p = ep;
                            continue;
                        }
                    }
                }
            }
        };
        self.depth += 1;
        Ok(result)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Res<Option<usize>> {
        let mut i = 0;
        while self.single_matches(s + i, p, ep) {
            i += 1;
        }
        self.tick(i as u64)?;
        loop {
            if let Some(e) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(e));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> Res<Option<usize>> {
        loop {
            if let Some(e) = self.do_match(s, ep + 1)? {
                return Ok(Some(e));
            }
            if !self.single_matches(s, p, ep) {
                return Ok(None);
            }
            s += 1;
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Res<Option<usize>> {
        let level = self.level;
        if level >= MAX_CAPTURES {
            return Err("too many captures".into());
        }
        self.capture[level] = (s, what);
        self.level = level + 1;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.level -= 1;
        }
        Ok(result)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Res<Option<usize>> {
        let l = (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CAP_UNFINISHED)
            .ok_or("invalid pattern capture")?;
        self.capture[l].1 = (s - self.capture[l].0) as isize;
        let result = self.do_match(s, p)?;
        if result.is_none() {
            self.capture[l].1 = CAP_UNFINISHED;
        }
        Ok(result)
    }

    fn match_balance(&mut self, s: usize, p: usize) -> Res<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return Err("malformed pattern (missing arguments to '%b')".into());
        }
        let (b, e) = (self.pat[p], self.pat[p + 1]);
        if self.src.get(s) != Some(&b) {
            return Ok(None);
        }
        let mut depth = 1;
        for i in s + 1..self.src.len() {
            let c = self.src[i];
            if c == e {
                depth -= 1;
                if depth == 0 {
                    self.tick((i - s) as u64)?;
                    return Ok(Some(i + 1));
                }
            } else if c == b {
                depth += 1;
            }
        }
        self.tick((self.src.len() - s) as u64)?;
        Ok(None)
    }

    fn match_capture(&mut self, s: usize, digit: u8) -> Res<Option<usize>> {
        let l = digit as isize - b'1' as isize;
        if l < 0 || l as usize >= self.level || self.capture[l as usize].1 == CAP_UNFINISHED {
            return Err(format!("invalid capture index %{} in pattern", l + 1));
        }
        let (init, len) = self.capture[l as usize];
        if len < 0 {
            return Ok(None);
        }
        let len = len as usize;
        self.tick(len as u64 / 16)?;
        Ok((self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len])
            .then_some(s + len))
    }

    /// Capture `i` of the match `s..e` (the whole match when the pattern has none).
    fn capture_value(&self, lua: &Lua, i: usize, s: usize, e: usize) -> Res<Value> {
        if i >= self.level {
            if i != 0 {
                return Err(format!("invalid capture index %{}", i + 1));
            }
            return lua_string(lua, &self.src[s..e]);
        }
        let (init, len) = self.capture[i];
        match len {
            CAP_UNFINISHED => Err("unfinished capture".into()),
            CAP_POSITION => Ok(Value::Integer(init as i64 + 1)),
            len => lua_string(lua, &self.src[init..init + len as usize]),
        }
    }

    fn push_captures(&self, lua: &Lua, out: &mut Vec<Value>, whole: Option<(usize, usize)>) -> Res<()> {
        let n = if self.level == 0 && whole.is_some() { 1 } else { self.level };
        let (s, e) = whole.unwrap_or((0, 0));
        for i in 0..n {
            out.push(self.capture_value(lua, i, s, e)?);
        }
        Ok(())
    }
}

impl Drop for Matcher<'_, '_> {
    fn drop(&mut self) {
        // What was not charged yet counts next time.
        if self.steps > 0 {
            let _ = (self.charge)(self.steps);
        }
    }
}

fn lua_string(lua: &Lua, bytes: &[u8]) -> Res<Value> {
    lua.create_string(bytes).map(Value::String).map_err(|e| e.to_string())
}

/// Lua 5.4's `posrelatI`: a 1-based position from a possibly negative one.
fn position(pos: i64, len: usize) -> usize {
    let len = len as i64;
    if pos > 0 {
        pos as usize
    } else if pos == 0 || pos < -len {
        1
    } else {
        (len + pos + 1) as usize
    }
}

fn new_matcher<'a, 'c>(src: &'a [u8], pat: &'a [u8], charge: Charge<'c>) -> Matcher<'a, 'c> {
    Matcher { src, pat, level: 0, capture: [(0, 0); MAX_CAPTURES], depth: MAX_DEPTH, steps: 0, charge }
}

/// `string.find` (`find`) and `string.match` (not `find`), as Lua 5.4 defines them.
pub(crate) fn find(
    lua: &Lua,
    src: &[u8],
    pat: &[u8],
    init: i64,
    plain: bool,
    find: bool,
    charge: Charge<'_>,
) -> Res<MultiValue> {
    let init = position(init, src.len()) - 1;
    let mut out = Vec::new();
    if init > src.len() {
        return Ok(MultiValue::from_vec(vec![Value::Nil]));
    }
    if find && (plain || !pat.iter().any(|c| SPECIALS.contains(c))) {
        let mut m = new_matcher(src, pat, charge);
        let hay = &src[init..];
        if pat.is_empty() {
            return Ok(MultiValue::from_vec(vec![
                Value::Integer(init as i64 + 1),
                Value::Integer(init as i64),
            ]));
        }
        let mut at = 0;
        while at + pat.len() <= hay.len() {
            match hay[at..=hay.len() - pat.len()].iter().position(|&c| c == pat[0]) {
                None => break,
                Some(i) => {
                    at += i;
                    m.tick(1 + i as u64 / 16 + pat.len() as u64 / 16)?;
                    if hay[at..at + pat.len()] == *pat {
                        let start = init + at;
                        return Ok(MultiValue::from_vec(vec![
                            Value::Integer(start as i64 + 1),
                            Value::Integer((start + pat.len()) as i64),
                        ]));
                    }
                    at += 1;
                }
            }
        }
        return Ok(MultiValue::from_vec(vec![Value::Nil]));
    }
    let (anchor, pat) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, pat),
    };
    let mut m = new_matcher(src, pat, charge);
    let mut s = init;
    loop {
        m.level = 0;
        m.depth = MAX_DEPTH;
        if let Some(e) = m.do_match(s, 0)? {
            if find {
                out.push(Value::Integer(s as i64 + 1));
                out.push(Value::Integer(e as i64));
                m.push_captures(lua, &mut out, None)?;
            } else {
                m.push_captures(lua, &mut out, Some((s, e)))?;
            }
            return Ok(MultiValue::from_vec(out));
        }
        s += 1;
        if anchor || s > src.len() {
            return Ok(MultiValue::from_vec(vec![Value::Nil]));
        }
    }
}

/// `string.gsub` with a string replacement (`repl`, `%0`–`%9` and `%%`), as Lua 5.4 defines it;
/// returns the new string and the number of matches.
pub(crate) fn gsub(
    lua: &Lua,
    src: &[u8],
    pat: &[u8],
    repl: &[u8],
    max: Option<i64>,
    charge: Charge<'_>,
) -> Res<(Vec<u8>, i64)> {
    let (anchor, pat) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, pat),
    };
    let max = max.unwrap_or(src.len() as i64 + 1);
    let mut m = new_matcher(src, pat, charge);
    let mut out = Output { bytes: Vec::with_capacity(src.len()), check_at: 1 << 20 };
    let (mut s, mut n, mut last) = (0usize, 0i64, None);
    while n < max {
        m.level = 0;
        m.depth = MAX_DEPTH;
        match m.do_match(s, 0)? {
            Some(e) if Some(e) != last => {
                n += 1;
                add_replacement(lua, &mut m, &mut out, repl, s, e)?;
                s = e;
                last = Some(e);
            }
            _ if s < src.len() => {
                out.bytes.push(src[s]);
                s += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    out.bytes.extend_from_slice(&src[s..]);
    Ok((out.bytes, n))
}

/// `gsub`'s result, built here, outside Lua's heap.
struct Output {
    bytes: Vec<u8>,
    /// Its length at the next check against the memory limit.
    check_at: usize,
}

impl Output {
    /// Appends `piece` (a match or capture a replacement copies, which a short replacement such
    /// as `%0%0%0` can make huge): charged a step for every 16 bytes, and past each doubling from
    /// 1 MiB checked against what the VM may still allocate under its memory limit, as Lua's own
    /// buffer would be.
    fn copy(&mut self, lua: &Lua, m: &mut Matcher, piece: &[u8]) -> Res<()> {
        m.tick(piece.len() as u64 / 16)?;
        self.bytes.extend_from_slice(piece);
        self.check(lua)
    }

    /// The check against the memory limit, once the result has doubled since the last one.
    fn check(&mut self, lua: &Lua) -> Res<()> {
        if self.bytes.len() >= self.check_at {
            if crate::heap::headroom(lua).is_some_and(|room| self.bytes.len() > room) {
                return Err("not enough memory".into());
            }
            self.check_at = self.bytes.len().saturating_mul(2);
        }
        Ok(())
    }
}

fn add_replacement(lua: &Lua, m: &mut Matcher, out: &mut Output, repl: &[u8], s: usize, e: usize) -> Res<()> {
    let mut i = 0;
    while i < repl.len() {
        let c = repl[i];
        i += 1;
        if c != ESC {
            out.bytes.push(c);
            continue;
        }
        let d = repl.get(i).copied().unwrap_or(0);
        i += 1;
        if d == ESC {
            out.bytes.push(ESC);
        } else if d == b'0' {
            let src = m.src;
            out.copy(lua, m, &src[s..e])?;
        } else if d.is_ascii_digit() {
            match m.capture_value(lua, (d - b'1') as usize, s, e)? {
                Value::Integer(pos) => out.bytes.extend_from_slice(pos.to_string().as_bytes()),
                Value::String(text) => out.copy(lua, m, &text.as_bytes())?,
                _ => {}
            }
        } else {
            return Err("invalid use of '%' in replacement string".into());
        }
    }
    m.tick(repl.len() as u64 / 16)?;
    out.check(lua)
}

/// The light userdata the Rust half returns first when the call must raise the message after it.
pub(crate) fn fail_marker() -> LightUserData {
    static ANCHOR: u8 = 0;
    LightUserData(&ANCHOR as *const u8 as *mut std::ffi::c_void)
}

/// Replaces `string.find`, `string.match`, `string.gmatch` and `string.gsub` in `string` (the
/// table scripts will share) with the budgeted ones. `work(lua, steps)` charges matching steps to
/// the running resume (the budget's); `bad` is the task API's argument-error helper.
pub(crate) fn install(
    lua: &Lua,
    work: impl Fn(&Lua, u64) -> Result<(), String> + Clone + Send + Sync + 'static,
    string: &mlua::Table,
    bad: &mlua::Function,
) -> mlua::Result<()> {
    let fail = |lua: &Lua, message: String| -> mlua::Result<MultiValue> {
        let located = message.ends_with("script exceeded its instruction budget");
        Ok(MultiValue::from_vec(vec![
            Value::LightUserData(fail_marker()),
            Value::String(lua.create_string(message)?),
            Value::Boolean(located),
        ]))
    };
    let b = work.clone();
    let raw_find = lua.create_function(
        move |lua, (s, p, init, plain, is_find): (mlua::LuaString, mlua::LuaString, i64, bool, bool)| {
            let mut charge = |steps| b(lua, steps);
            match find(lua, &s.as_bytes(), &p.as_bytes(), init, plain, is_find, &mut charge) {
                Ok(values) => Ok(values),
                Err(message) => fail(lua, message),
            }
        },
    )?;
    let raw_gsub = lua.create_function(
        move |lua, (s, p, repl, max): (mlua::LuaString, mlua::LuaString, mlua::LuaString, i64)| {
            let mut charge = |steps| work(lua, steps);
            match gsub(lua, &s.as_bytes(), &p.as_bytes(), &repl.as_bytes(), Some(max), &mut charge) {
                Ok((out, n)) => {
                    Ok(MultiValue::from_vec(vec![Value::String(lua.create_string(out)?), Value::Integer(n)]))
                }
                Err(message) => fail(lua, message),
            }
        },
    )?;
    // Where a wrapper's `return finish(...)` is a tail call, `finish` blames its caller's caller.
    let level = if cfg!(feature = "luau") { 3 } else { 2 };
    lua.load(include_str!("lua/strings.lua")).set_name("=bevy_lua_coroutines/strings.lua").call::<()>((
        raw_find,
        raw_gsub,
        Value::LightUserData(fail_marker()),
        bad.clone(),
        level,
        string.clone(),
    ))
}
