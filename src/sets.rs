//! The system sets the plugin's systems run in, here at the bottom so that every capability can
//! order its own systems against the step without knowing the plugin.

use bevy::prelude::*;

/// The plugin's systems, in the order they run in the plugin's schedule.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LuaCoroutinesSystems {
    /// Instances follow `LuaScripts` changes: new scripts attach, removed ones are cancelled.
    Sync,
    /// Every ready task is resumed; errors and prints become messages.
    Step,
}

/// The step system alone (inside [`LuaCoroutinesSystems::Step`]), for systems that must run right
/// after it, such as the one that writes the messages scripts wrote.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StepRun;
