//! The world as scripts reach it: a pointer to the step's `&mut World`, kept in the VM's slot
//! only while the step runs, so Lua callbacks (`entity:get`, `world.spawn`, ...) can use the world.
//! The slot is boxed in the VM's app data, so the C functions of `world::fast` can keep its
//! address ([`slot_ptr`]) and reach the world without looking the app data up.
//!
//! This is the crate's one use of `unsafe` for world access. The invariant that makes it sound:
//!
//! - [`scoped`] takes the step's `&mut World` for its whole duration and does not touch the world
//!   itself while its closure runs, so the pointer it stores is the only way to the world then;
//!   its guard clears the pointer before `scoped` returns (on unwind too), so no pointer outlives
//!   the borrow it came from, and none survives into the next frame or across a yield that ends
//!   the step.
//! - [`with_world`] and [`WorldSlot::with`] take the pointer *out* of the slot while their
//!   closure runs and put it back after (on unwind too), so at most one `&mut World` made from it
//!   exists at any time: a world function reached again while one runs (through a `__gc`, say)
//!   finds the slot empty and fails.
//! - Only the thread that entered [`scoped`] may take the pointer.
//! - The `LuaRuntime` resource, which owns the VM, is taken out of the world (`resource_scope`)
//!   for the step, so the world reached here never aliases the VM that is running.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::ptr::NonNull;

use bevy::prelude::World;
use mlua::Lua;

/// Where the step's world is while the step runs (empty otherwise).
#[derive(Default)]
pub(crate) struct WorldSlot {
    world: Cell<Option<NonNull<World>>>,
    thread: Cell<Option<ThreadMark>>,
    /// A world function holds the world (its pointer is out of the slot).
    busy: Cell<bool>,
}

/// The VM's slot, in its app data: boxed, so its address stays put for the C functions that
/// keep it (the box is made once, by [`install`], and lives as long as the VM).
struct Boxed(Box<WorldSlot>);

// SAFETY: the pointer is only dereferenced on the thread recorded beside it (see `with`), while
// the `&mut World` it came from is borrowed by `scoped` on that thread; the VM that owns the slot
// is used by one thread at a time.
unsafe impl Send for Boxed {}

/// Names the thread that runs the step: the address of a thread-local, unique among the threads
/// alive at once, which is all the slot needs (the thread that set it is alive until it restores
/// it). Cheaper than `std::thread::current().id()`, which clones and drops an `Arc` (two atomic
/// operations) on every world call.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct ThreadMark(usize);

impl ThreadMark {
    fn here() -> Self {
        thread_local! { static MARK: u8 = const { 0 }; }
        MARK.with(|mark| ThreadMark(mark as *const u8 as usize))
    }
}

/// Why the world could not be reached.
pub(crate) enum Unreachable {
    /// No step is running (or it runs on another thread).
    NoStep,
    /// Another world function holds the world.
    Busy,
}

/// Makes the VM's slot (empty). Called once, when the world extension is installed.
pub(crate) fn install(lua: &Lua) {
    lua.set_app_data(Boxed(Box::default()));
}

/// The VM's slot, if [`install`] made one.
fn slot(lua: &Lua) -> Option<&WorldSlot> {
    let ptr = slot_ptr(lua);
    // SAFETY: the box lives as long as the VM (nothing removes or replaces the app data).
    unsafe { ptr.as_ref() }
}

/// The address of the VM's slot (null without one), for C functions to keep: it stays valid for
/// as long as the VM lives.
pub(crate) fn slot_ptr(lua: &Lua) -> *const WorldSlot {
    lua.app_data_ref::<Boxed>().map_or(std::ptr::null(), |b| &*b.0 as *const WorldSlot)
}

/// Puts back what a slot held when dropped.
struct Restore<'a> {
    slot: &'a WorldSlot,
    world: Option<NonNull<World>>,
    thread: Option<ThreadMark>,
    busy: bool,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        self.slot.world.set(self.world);
        self.slot.thread.set(self.thread);
        self.slot.busy.set(self.busy);
    }
}

/// Runs `f` with the world reachable from Lua callbacks through [`with_world`].
pub(crate) fn scoped<R>(lua: &Lua, world: &mut World, f: impl FnOnce() -> R) -> R {
    let Some(slot) = slot(lua) else { return f() };
    let _restore = Restore {
        slot,
        world: slot.world.replace(Some(NonNull::from(world))),
        thread: slot.thread.replace(Some(ThreadMark::here())),
        busy: slot.busy.replace(false),
    };
    f()
}

impl WorldSlot {
    /// Runs `f` with the step's world, unless no step runs on this thread or another world
    /// function holds the world.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut World) -> R) -> Result<R, Unreachable> {
        if self.busy.get() {
            return Err(Unreachable::Busy);
        }
        let here = ThreadMark::here();
        let (Some(mut world), true) = (self.world.get(), self.thread.get() == Some(here)) else {
            return Err(Unreachable::NoStep);
        };
        self.world.set(None);
        self.busy.set(true);
        let _restore = Restore { slot: self, world: Some(world), thread: Some(here), busy: false };
        // SAFETY: `scoped` set this pointer from a `&mut World` it borrows until it restores the
        // slot, and does not use the world meanwhile; the pointer was taken out of the slot
        // above, so this is the only `&mut World` made from it until `_restore` puts it back.
        let world = unsafe { world.as_mut() };
        Ok(f(world))
    }
}

/// Runs `f` with the step's world, or fails (with a message naming `what`) when no step runs,
/// when called from another thread, or while another world function is running.
pub(crate) fn with_world<R>(lua: &Lua, what: &str, f: impl FnOnce(&mut World) -> R) -> Result<R, String> {
    match slot(lua).map_or(Err(Unreachable::NoStep), |slot| slot.with(f)) {
        Ok(r) => Ok(r),
        // A finalizer or metamethod that runs while another world function holds the world.
        Err(Unreachable::Busy) => {
            Err(format!("'{what}' cannot reach the world from inside another world function"))
        }
        Err(Unreachable::NoStep) => {
            Err(format!("'{what}' needs the world, which scripts reach only while the step runs them"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_thread_that_runs_the_step_reaches_the_world() {
        let lua = Lua::new();
        install(&lua);
        let mut world = World::new();
        let (mine, other) = std::thread::scope(|s| {
            // Both threads alive at once: their marks differ.
            let other = s.spawn(|| (ThreadMark::here(), ThreadMark::here()));
            (ThreadMark::here(), other.join().unwrap())
        });
        assert_eq!(other.0, other.1, "a thread's mark stays the same");
        assert_ne!(mine, other.0);
        let slot = slot(&lua).unwrap();
        assert!(matches!(slot.with(|_| ()), Err(Unreachable::NoStep)), "no step runs");
        scoped(&lua, &mut world, || {
            assert!(slot.with(|_| ()).is_ok());
            slot.thread.set(Some(other.0));
            assert!(matches!(slot.with(|_| ()), Err(Unreachable::NoStep)), "another thread's step");
            slot.thread.set(Some(mine));
            assert!(matches!(slot.with(|_| slot.with(|_| ()).is_err()), Ok(true)), "busy inside");
        });
        assert!(matches!(slot.with(|_| ()), Err(Unreachable::NoStep)), "the step is over");
    }
}
