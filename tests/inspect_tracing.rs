//! The `tracing` span around every tracked resume. Alone in its file (its own process): tracing
//! caches per call site whether anyone listens, which other tests running at the same time with
//! no subscriber would decide.

mod common;
use bevy_lua_coroutines::prelude::*;
use common::*;

#[test]
fn tracking_opens_a_tracing_span_per_resume_named_by_the_script() {
    use bevy::log::tracing::{self, field::Visit, span};
    use bevy::log::tracing_subscriber::{self, Layer, layer::Context, prelude::*};
    use std::sync::{Arc, Mutex};

    struct Spans(Arc<Mutex<Vec<String>>>);
    struct Script(String);
    impl Visit for Script {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "script" {
                self.0 = format!("{value:?}");
            }
        }
    }
    impl<S: tracing::Subscriber> Layer<S> for Spans {
        fn on_new_span(&self, attrs: &span::Attributes<'_>, _: &span::Id, _: Context<'_, S>) {
            let mut script = Script(String::new());
            attrs.record(&mut script);
            self.0.lock().unwrap().push(format!("{}: {}", attrs.metadata().name(), script.0));
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Spans(seen.clone()));
    let mut app = create_app();
    app.world().resource::<LuaRuntime>().set_tracking(true);
    spawn_script(&mut app, "scripts/traced.lua", "task.wait() task.wait()");
    tracing::subscriber::with_default(subscriber, || run(&mut app, 4));
    let seen = seen.lock().unwrap();
    let ours: Vec<_> = seen.iter().filter(|s| s.starts_with("lua script")).collect();
    assert_eq!(ours, ["lua script: scripts/traced.lua"; 3], "one span per resume");
}
