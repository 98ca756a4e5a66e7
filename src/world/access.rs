//! The world as scripts reach it: a pointer to the step's `&mut World`, kept in the VM's app data
//! only while the step runs, so Lua callbacks (`entity:get`, `world.spawn`, ...) can use the world.
//!
//! This is the crate's one use of `unsafe` for world access. The invariant that makes it sound:
//!
//! - [`scoped`] takes the step's `&mut World` for its whole duration and does not touch the world
//!   itself while its closure runs, so the pointer it stores is the only way to the world then;
//!   its guard clears the pointer before `scoped` returns (on unwind too), so no pointer outlives
//!   the borrow it came from, and none survives into the next frame or across a yield that ends
//!   the step.
//! - [`with_world`] takes the pointer *out* of the slot while its closure runs and puts it back
//!   after (on unwind too), so at most one `&mut World` made from it exists at any time: a world
//!   function reached again while one runs (through a `__gc`, say) finds the slot empty and fails.
//! - Only the thread that entered [`scoped`] may take the pointer.
//! - The `LuaRuntime` resource, which owns the VM, is taken out of the world (`resource_scope`)
//!   for the step, so the world reached here never aliases the VM that is running.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::thread::ThreadId;

use bevy::prelude::World;
use mlua::Lua;

/// Where the step's world is while the step runs (empty otherwise).
#[derive(Default)]
pub(crate) struct WorldSlot {
    world: Option<NonNull<World>>,
    thread: Option<ThreadId>,
    /// A world function holds the world (its pointer is out of the slot).
    busy: bool,
}

// SAFETY: the pointer is only dereferenced on the thread recorded beside it (see `with_world`),
// while the `&mut World` it came from is borrowed by `scoped` on that thread.
unsafe impl Send for WorldSlot {}

/// Puts back what a slot held when dropped.
struct Restore<'a> {
    lua: &'a Lua,
    previous: WorldSlot,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Some(mut slot) = self.lua.app_data_mut::<WorldSlot>() {
            *slot = std::mem::take(&mut self.previous);
        }
    }
}

/// Runs `f` with the world reachable from Lua callbacks through [`with_world`].
pub(crate) fn scoped<R>(lua: &Lua, world: &mut World, f: impl FnOnce() -> R) -> R {
    let entered = WorldSlot {
        world: Some(NonNull::from(world)),
        thread: Some(std::thread::current().id()),
        busy: false,
    };
    let previous = match lua.app_data_mut::<WorldSlot>() {
        Some(mut slot) => std::mem::replace(&mut *slot, entered),
        None => {
            lua.set_app_data(entered);
            WorldSlot::default()
        }
    };
    let _restore = Restore { lua, previous };
    f()
}

/// Runs `f` with the step's world, or fails (with a message naming `what`) when no step runs,
/// when called from another thread, or while another world function is running.
pub(crate) fn with_world<R>(lua: &Lua, what: &str, f: impl FnOnce(&mut World) -> R) -> Result<R, String> {
    let here = std::thread::current().id();
    let taken = lua
        .app_data_mut::<WorldSlot>()
        .map(|mut slot| {
            std::mem::replace(&mut *slot, WorldSlot { world: None, thread: Some(here), busy: true })
        })
        .unwrap_or_default();
    let (Some(mut world), true) = (taken.world, taken.thread == Some(here)) else {
        let busy = taken.busy;
        let _restore = Restore { lua, previous: taken };
        if busy {
            // A finalizer or metamethod that runs while another world function holds the world.
            return Err(format!("'{what}' cannot reach the world from inside another world function"));
        }
        return Err(format!("'{what}' needs the world, which scripts reach only while the step runs them"));
    };
    let _restore =
        Restore { lua, previous: WorldSlot { world: Some(world), thread: Some(here), busy: false } };
    // SAFETY: `scoped` set this pointer from a `&mut World` it borrows until it clears the slot,
    // and does not use the world meanwhile; the pointer was taken out of the slot above, so this
    // is the only `&mut World` made from it until `_restore` puts it back.
    let world = unsafe { world.as_mut() };
    Ok(f(world))
}
