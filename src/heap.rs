//! The VM's memory: its limit, and on Lua 5.4 the allocator Lua calls, which keeps small freed
//! blocks for the next allocation of the same size.
//!
//! Scripts make and drop small objects at a high rate (a `Vec3` is a table and its fields, a
//! channel message a table, every closure and coroutine a few blocks), and the collector frees
//! them in bursts: past the C allocator's small per-size caches, each `malloc` and `free` walks
//! its bins (about 250 instructions per pair, on top of mlua's accounting). On Lua 5.4 the VM's
//! allocator is [`install`]ed in front of mlua's: a freed block of at most `pool::MAX_POOLED`
//! bytes goes on a free list for its exact size, and an allocation of that size takes it back,
//! a few instructions each way. Everything else, and every block the lists are refilled with,
//! goes to mlua's allocator unchanged. The lists keep at most as many bytes as Lua holds live (at
//! least 1 MiB); [`trim`], after every step, hands back what is over that when the live heap has
//! shrunk. Kept blocks count neither against the limit nor in `Lua::used_memory`.
//!
//! The memory limit moves here with it: mlua keeps its limit in its own allocator's state, which
//! it no longer reaches once another allocator is installed, so [`set_memory_limit`] is the one
//! way to change it (`LuaRuntime::set_memory_limit` for users); in the other flavours it is
//! mlua's.
//!
//! Invariants (Lua 5.4):
//! - Every block Lua holds was allocated by mlua's allocator with exactly its size, whichever of
//!   the two allocators Lua was calling then; the lists hold only such blocks, under their
//!   exact size. So either allocator may free or resize any block, and installing, swapping and
//!   removing [`Heap`](pool) at any time is sound.
//! - The `Heap` is the allocator's `ud`, made in [`install`] and freed in [`uninstall`] after
//!   mlua's allocator is back and the lists are emptied into it. Lua calls the allocator only
//!   while a thread holds mlua's lock on the VM, and every function here reads, swaps or changes
//!   the `Heap` only inside one hold of that lock (`Lua::exec_raw_lua`, which takes it without a
//!   protected call: nothing done inside allocates, raises or pushes onto a stack), finding the
//!   `Heap` anew from the VM's allocator each time.
//! - mlua skips the protected call around its own allocations when it believes allocation cannot
//!   fail (its own limit is 0). With a limit here, mlua's own limit is set to the largest value,
//!   never reached, so it keeps protecting them; [`uninstall`] gives mlua the limit back.
//! - A free block's first word links it to the next of its size; no block smaller than a pointer
//!   is kept.
#![allow(unsafe_code)]

use mlua::Lua;

/// Sets the VM's memory limit in bytes (0: none) and returns the one it replaces.
pub(crate) fn set_memory_limit(lua: &Lua, limit: usize) -> mlua::Result<usize> {
    #[cfg(feature = "lua54")]
    if let Some(previous) = pool::set_limit(lua, limit) {
        return previous;
    }
    lua.set_memory_limit(limit)
}

/// The bytes the VM may still allocate under its memory limit (`None`: it has none). For memory
/// the crate keeps for the VM outside Lua's heap (the step's lists), which is checked against the
/// limit when it grows, as the Lua tables it replaced were.
pub(crate) fn headroom(lua: &Lua) -> Option<usize> {
    #[cfg(feature = "lua54")]
    if let Some(room) = pool::headroom(lua) {
        return room;
    }
    // mlua has no getter: the limit is read by setting it.
    let limit = lua.set_memory_limit(0).ok()?;
    let _ = lua.set_memory_limit(limit);
    (limit != 0).then(|| limit.saturating_sub(lua.used_memory()))
}

/// Makes the VM's allocator this module's (Lua 5.4), with `limit` (elsewhere: sets mlua's limit).
/// The runtime calls it once, when the VM is otherwise ready, and [`uninstall`] before it drops.
pub(crate) fn install(lua: &Lua, limit: Option<usize>) -> mlua::Result<()> {
    #[cfg(feature = "lua54")]
    pool::install(lua);
    if let Some(limit) = limit
        && let Err(e) = set_memory_limit(lua, limit)
    {
        uninstall(lua);
        return Err(e);
    }
    Ok(())
}

/// Puts mlua's allocator back, with the limit, and hands it the kept blocks (Lua 5.4; elsewhere
/// nothing).
pub(crate) fn uninstall(lua: &Lua) {
    #[cfg(feature = "lua54")]
    pool::uninstall(lua);
    #[cfg(not(feature = "lua54"))]
    let _ = lua;
}

/// After a step: hands mlua's allocator the kept blocks beyond the cap, if the live heap shrank
/// below what the lists hold (Lua 5.4; elsewhere nothing).
pub(crate) fn trim(lua: &Lua) {
    #[cfg(feature = "lua54")]
    pool::trim(lua);
    #[cfg(not(feature = "lua54"))]
    let _ = lua;
}

#[cfg(feature = "lua54")]
mod pool {
    use std::ffi::c_void;
    use std::ptr;

    use mlua::{Lua, ffi};

    /// The largest block kept for reuse (bytes). Lua's tables (56), their small hash parts,
    /// strings, closures, upvalues and small userdata are below it.
    const MAX_POOLED: usize = 256;
    /// The free lists hold at most as many bytes as Lua holds, or this many when Lua holds fewer; a
    /// block freed beyond that goes back to mlua's allocator. A collection cycle frees up to about
    /// what the heap held live (the collector runs again once the heap doubles), in bursts while
    /// it sweeps, so a cap well below the live heap would send most of each burst back to the
    /// C allocator and take it from there again in the next cycle.
    const POOL_FLOOR: usize = 1024 * 1024;

    /// The allocator's state (the module docs have its invariants).
    pub(super) struct Heap {
        /// Bytes of the blocks Lua holds, as Lua counts them; what the limit is checked against.
        used: usize,
        /// Bytes Lua may hold (0: no limit).
        limit: usize,
        /// Bytes on the free lists.
        pooled: usize,
        /// `free[size]`: the first free block of exactly `size` bytes, linked through first words.
        free: [*mut c_void; MAX_POOLED + 1],
        /// mlua's allocator and its state, which back every block.
        backing: ffi::lua_Alloc,
        backing_ud: *mut c_void,
    }

    impl Heap {
        /// The most bytes the lists keep now.
        fn cap(&self) -> usize {
            self.used.max(POOL_FLOOR)
        }
    }

    /// The `lua_Alloc` of a VM with a [`Heap`] (`ud`).
    unsafe extern "C" fn allocate(
        ud: *mut c_void,
        block: *mut c_void,
        osize: usize,
        nsize: usize,
    ) -> *mut c_void {
        // SAFETY: `ud` is the `Heap` `install` made, alive while this is the VM's allocator, and
        // only the thread holding the VM calls it (module invariants). `block`, when not null, is
        // a block of exactly `osize` bytes that mlua's allocator made.
        unsafe {
            let heap = &mut *(ud as *mut Heap);
            if block.is_null() {
                // (`osize` is the kind of object here, not a size.)
                if nsize == 0 {
                    return ptr::null_mut();
                }
                if heap.limit != 0 && heap.used.saturating_add(nsize) > heap.limit {
                    return ptr::null_mut(); // Lua collects and tries again, then raises
                }
                if nsize <= MAX_POOLED {
                    let head = heap.free[nsize];
                    if !head.is_null() {
                        heap.free[nsize] = *(head as *mut *mut c_void);
                        heap.pooled -= nsize;
                        heap.used += nsize;
                        return head;
                    }
                }
                let fresh = (heap.backing)(heap.backing_ud, block, osize, nsize);
                if !fresh.is_null() {
                    heap.used += nsize;
                }
                return fresh;
            }
            if nsize == 0 {
                heap.used = heap.used.saturating_sub(osize);
                if (size_of::<*mut c_void>()..=MAX_POOLED).contains(&osize)
                    && heap.pooled + osize <= heap.cap()
                {
                    *(block as *mut *mut c_void) = heap.free[osize];
                    heap.free[osize] = block;
                    heap.pooled += osize;
                    return ptr::null_mut();
                }
                return (heap.backing)(heap.backing_ud, block, osize, 0);
            }
            if nsize > osize && heap.limit != 0 && heap.used.saturating_add(nsize - osize) > heap.limit {
                return ptr::null_mut();
            }
            let moved = (heap.backing)(heap.backing_ud, block, osize, nsize);
            if !moved.is_null() {
                heap.used = heap.used.saturating_sub(osize) + nsize;
            }
            moved
        }
    }

    /// Runs `f` with a state of the VM and its [`Heap`] (if its allocator is this module's), in
    /// one hold of mlua's lock and without a protected call (module invariants).
    fn locked<R>(lua: &Lua, f: impl FnOnce(*mut ffi::lua_State, Option<*mut Heap>) -> R) -> R {
        lua.exec_raw_lua(|raw| {
            let l = raw.state();
            let mut ud = ptr::null_mut();
            // SAFETY: reads the VM's allocator; allocates nothing.
            let current = unsafe { ffi::lua_getallocf(l, &mut ud) };
            f(l, ptr::fn_addr_eq(current, allocate as ffi::lua_Alloc).then_some(ud as *mut Heap))
        })
    }

    /// The bytes Lua holds, as the collector counts them; `None` while the collector runs a
    /// finalizer (Lua does not count then).
    unsafe fn lua_bytes(l: *mut ffi::lua_State) -> Option<usize> {
        // SAFETY: `l` is a state of the VM; counting allocates nothing.
        unsafe {
            let kib = usize::try_from(ffi::lua_gc(l, ffi::LUA_GCCOUNT, 0)).ok()?;
            let rest = usize::try_from(ffi::lua_gc(l, ffi::LUA_GCCOUNTB, 0)).ok()?;
            Some(kib * 1024 + rest)
        }
    }

    /// Hands the blocks of `heap`'s lists to its backing allocator until they hold at most
    /// `keep` bytes.
    unsafe fn release(heap: &mut Heap, keep: usize) {
        // SAFETY: the caller holds the VM; every block on a list is mlua's, of its list's size.
        unsafe {
            for size in (0..=MAX_POOLED).rev() {
                while heap.pooled > keep {
                    let block = heap.free[size];
                    if block.is_null() {
                        break;
                    }
                    heap.free[size] = *(block as *mut *mut c_void);
                    heap.pooled -= size;
                    (heap.backing)(heap.backing_ud, block, size, 0);
                }
            }
        }
    }

    pub(super) fn install(lua: &Lua) {
        locked(lua, |l, installed| {
            if installed.is_some() {
                return;
            }
            let mut backing_ud = ptr::null_mut();
            // SAFETY: swaps the allocator between two allocations, with a `Heap` that lives until
            // `uninstall` (module invariants); Lua's count of its bytes seeds `used` (Lua is not
            // running a finalizer here: the VM was just made).
            unsafe {
                let backing = ffi::lua_getallocf(l, &mut backing_ud);
                let heap = Box::new(Heap {
                    used: lua_bytes(l).unwrap_or(0),
                    limit: 0,
                    pooled: 0,
                    free: [ptr::null_mut(); MAX_POOLED + 1],
                    backing,
                    backing_ud,
                });
                ffi::lua_setallocf(l, allocate, Box::into_raw(heap) as *mut c_void);
            }
        })
    }

    /// Sets the limit the installed `Heap` checks and returns the one it replaces; `None` when
    /// this module's allocator is not the VM's. mlua's own limit becomes the largest value (or 0
    /// with none) so that mlua protects its allocations exactly when one can fail.
    pub(super) fn set_limit(lua: &Lua, limit: usize) -> Option<mlua::Result<usize>> {
        locked(lua, |l, installed| {
            let heap = installed?;
            // SAFETY: inside the lock (module invariants). mlua reaches its limit only while its own
            // allocator is the VM's: it is swapped in for the call, which calls no Lua, and back.
            unsafe {
                ffi::lua_setallocf(l, (*heap).backing, (*heap).backing_ud);
                let set = lua.set_memory_limit(if limit == 0 { 0 } else { usize::MAX });
                ffi::lua_setallocf(l, allocate, heap as *mut c_void);
                if let Some(used) = lua_bytes(l) {
                    (*heap).used = used;
                }
                Some(set.map(|_| std::mem::replace(&mut (*heap).limit, limit)))
            }
        })
    }

    pub(super) fn trim(lua: &Lua) {
        locked(lua, |_, installed| {
            let Some(heap) = installed else { return };
            // SAFETY: inside the lock (module invariants).
            unsafe {
                let heap = &mut *heap;
                if heap.pooled > heap.cap() {
                    release(heap, heap.cap());
                }
            }
        })
    }

    pub(super) fn uninstall(lua: &Lua) {
        locked(lua, |l, installed| {
            let Some(heap) = installed else { return };
            // SAFETY: inside the lock. mlua's allocator goes back first, then the kept blocks go to
            // it at their exact sizes, then the `Heap` is freed: nothing calls `allocate` any more.
            // mlua's count is the live bytes by then, so the limit means what it meant here.
            unsafe {
                let mut heap = Box::from_raw(heap);
                ffi::lua_setallocf(l, heap.backing, heap.backing_ud);
                release(&mut heap, 0);
                let _ = lua.set_memory_limit(heap.limit);
            }
        })
    }

    /// The bytes the installed `Heap` lets Lua still allocate (`Some(None)`: no limit); `None`
    /// when this module's allocator is not the VM's.
    pub(super) fn headroom(lua: &Lua) -> Option<Option<usize>> {
        // SAFETY: inside the lock (module invariants); reads two counts.
        locked(lua, |_, installed| {
            installed.map(|heap| unsafe {
                let heap = &*heap;
                (heap.limit != 0).then(|| heap.limit.saturating_sub(heap.used))
            })
        })
    }

    /// The bytes the VM's `Heap` counts Lua as holding, and the bytes on its lists.
    #[cfg(test)]
    pub(super) fn counts(lua: &Lua) -> Option<(usize, usize)> {
        // SAFETY: inside the lock (module invariants).
        locked(lua, |_, installed| installed.map(|heap| unsafe { ((*heap).used, (*heap).pooled) }))
    }
}

#[cfg(all(test, feature = "lua54"))]
mod tests {
    use mlua::{Lua, Table};

    use super::pool;

    /// Lua's own count of its bytes, and the count the allocator checks the limit against.
    fn counts(lua: &Lua) -> (usize, usize) {
        let (used, _) = pool::counts(lua).expect("the heap is installed");
        (lua.used_memory(), used)
    }

    /// Makes `n` tables with a short string each, and lets them go.
    fn churn(lua: &Lua, n: usize) {
        lua.load(format!(
            "local t = {{}} for i = 1, {n} do t[i] = {{ x = i, s = 'k' .. i % 50 }} end t = nil"
        ))
        .exec()
        .unwrap();
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
    }

    /// Whether `source` fails with Lua's memory error (caught by `pcall` in the script).
    fn runs_out(lua: &Lua, source: &str) -> bool {
        let (ok, err): (bool, String) =
            lua.load(format!("return pcall(function() {source} end)")).eval().unwrap();
        !ok && err.contains("memory")
    }

    #[test]
    fn reused_blocks_keep_the_count_the_limit_is_checked_against() {
        let lua = Lua::new();
        super::install(&lua, None).unwrap();
        churn(&lua, 20_000);
        let (lua_count, heap_count) = counts(&lua);
        assert_eq!(heap_count, lua_count, "the allocator's count drifted from Lua's");
        churn(&lua, 20_000); // this time from the free lists
        let (lua_count2, heap_count2) = counts(&lua);
        assert_eq!(heap_count2, lua_count2);
        assert!(lua_count2 < lua_count + 64 * 1024, "{lua_count} -> {lua_count2}: churn kept memory");
        super::uninstall(&lua);
        assert!(pool::counts(&lua).is_none());
        // mlua's allocator is back, counting what Lua holds: the VM goes on and drops cleanly.
        lua.gc_collect().unwrap();
        let raw = lua.used_memory();
        assert_eq!(lua.set_memory_limit(64 * 1024 * 1024).unwrap(), 0);
        churn(&lua, 1_000);
        assert!(lua.used_memory() < raw + 64 * 1024, "mlua's count after the hand-back is off");
    }

    #[test]
    fn the_limit_counts_live_bytes_and_can_be_changed() {
        let lua = Lua::new();
        super::install(&lua, Some(64 * 1024 * 1024)).unwrap();
        churn(&lua, 50_000); // fills the free lists
        let base = lua.used_memory();
        assert_eq!(super::set_memory_limit(&lua, base + 512 * 1024).unwrap(), 64 * 1024 * 1024);
        // Live memory past the limit fails as Lua's memory error, caught by `pcall`: fresh
        // blocks (a list: nothing grows in place)...
        assert!(runs_out(&lua, "local head for i = 1, 1e7 do head = { head } end"));
        // ... and a block that grows (an array part, reallocated).
        assert!(runs_out(&lua, "local t = {} for i = 1, 1e8 do t[i] = i end"));
        lua.gc_collect().unwrap();
        let (lua_count, heap_count) = counts(&lua);
        assert_eq!(heap_count, lua_count, "the count drifted across the failures");
        // Garbage in the free lists does not count: the same work fits again.
        let held: Table =
            lua.load("local t = {} for i = 1, 1000 do t[i] = { i } end return t").eval().unwrap();
        assert_eq!(held.raw_len(), 1000);
        assert_eq!(super::set_memory_limit(&lua, 0).unwrap(), base + 512 * 1024);
        let big: Table =
            lua.load("local t = {} for i = 1, 200000 do t[i] = { i } end return t").eval().unwrap();
        assert_eq!(big.raw_len(), 200_000);
        // Handed back, mlua's allocator keeps the limit.
        assert_eq!(super::set_memory_limit(&lua, 8 * 1024 * 1024).unwrap(), 0);
        drop(big);
        super::uninstall(&lua);
        assert_eq!(lua.set_memory_limit(16 * 1024 * 1024).unwrap(), 8 * 1024 * 1024);
    }

    #[test]
    fn the_lists_shrink_back_when_the_live_heap_does() {
        let lua = Lua::new();
        super::install(&lua, None).unwrap();
        // A burst of garbage far larger than what stays live.
        let keep: Table =
            lua.load("local t = {} for i = 1, 300000 do t[i] = { i } end return t").eval().unwrap();
        drop(keep);
        lua.gc_collect().unwrap();
        lua.gc_collect().unwrap();
        let (used, pooled) = pool::counts(&lua).unwrap();
        assert!(pooled > 4 * 1024 * 1024, "the burst should fill the lists ({pooled} B kept)");
        super::trim(&lua);
        let (used_after, pooled_after) = pool::counts(&lua).unwrap();
        assert_eq!(used_after, used);
        assert!(pooled_after <= used.max(1024 * 1024), "{pooled_after} B kept for {used} B live");
        churn(&lua, 10_000); // and the VM goes on
        super::uninstall(&lua);
    }
}
