//! [`LuaDiagnosticsPlugin`]: the scheduler's figures as Bevy diagnostics, so
//! `LogDiagnosticsPlugin` (or any tool that reads [`DiagnosticsStore`](bevy::diagnostic::DiagnosticsStore))
//! shows them: tasks alive, tasks resumed per frame, time spent resuming tasks per frame, and the
//! VM's memory. Adding it turns tracking on (see [`LuaRuntime::set_tracking`]), which the step
//! time and per-script costs need.

use bevy::diagnostic::{Diagnostic, DiagnosticPath, Diagnostics, RegisterDiagnostic};
use bevy::prelude::*;

use crate::runtime::LuaRuntime;

/// Registers the scheduler's diagnostics and measures them every frame, after the step.
///
/// ```no_run
/// # use bevy::prelude::*;
/// # use bevy::diagnostic::LogDiagnosticsPlugin;
/// # use bevy_lua_coroutines::prelude::*;
/// App::new()
///     .add_plugins((MinimalPlugins, AssetPlugin::default(), LuaCoroutinesPlugin::default()))
///     .add_plugins((LuaDiagnosticsPlugin, LogDiagnosticsPlugin::default()))
///     .run();
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct LuaDiagnosticsPlugin;

impl LuaDiagnosticsPlugin {
    /// Tasks alive (ready or waiting) after the step.
    pub const TASKS_ALIVE: DiagnosticPath = DiagnosticPath::const_new("lua/tasks_alive");
    /// Tasks resumed in the frame's step.
    pub const TASKS_RESUMED: DiagnosticPath = DiagnosticPath::const_new("lua/tasks_resumed");
    /// Milliseconds spent resuming tasks in the frame's step.
    pub const STEP_TIME: DiagnosticPath = DiagnosticPath::const_new("lua/step_time");
    /// The VM's memory, in KiB.
    pub const MEMORY: DiagnosticPath = DiagnosticPath::const_new("lua/memory");
}

impl Plugin for LuaDiagnosticsPlugin {
    fn build(&self, app: &mut App) {
        app.register_diagnostic(Diagnostic::new(Self::TASKS_ALIVE))
            .register_diagnostic(Diagnostic::new(Self::TASKS_RESUMED))
            .register_diagnostic(Diagnostic::new(Self::STEP_TIME).with_suffix("ms"))
            .register_diagnostic(Diagnostic::new(Self::MEMORY).with_suffix("KiB"))
            .add_systems(Startup, |runtime: Res<LuaRuntime>| runtime.set_tracking(true))
            .add_systems(Last, measure);
    }
}

fn measure(runtime: Res<LuaRuntime>, mut diagnostics: Diagnostics) {
    let (resumed, time) = runtime.last_step();
    diagnostics.add_measurement(&LuaDiagnosticsPlugin::TASKS_ALIVE, || runtime.live_tasks() as f64);
    diagnostics.add_measurement(&LuaDiagnosticsPlugin::TASKS_RESUMED, || resumed as f64);
    diagnostics.add_measurement(&LuaDiagnosticsPlugin::STEP_TIME, || time.as_secs_f64() * 1e3);
    diagnostics.add_measurement(&LuaDiagnosticsPlugin::MEMORY, || runtime.used_memory() as f64 / 1024.0);
}
