//! Tracing: the span and the retry events.

use super::*;

// ---------------------------------------------------------------------------------------------
// 13. tracing.
// ---------------------------------------------------------------------------------------------

/// An event as the capturing subscriber saw it.
#[derive(Debug, Clone)]
struct SeenEvent {
    level: tracing::Level,
    /// The innermost entered span's name.
    span: Option<&'static str>,
    fields: BTreeMap<&'static str, String>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<&'static str>,
    events: Vec<SeenEvent>,
}

/// A minimal subscriber that records span names and event fields.
struct Capture {
    seen: Arc<Mutex<Seen>>,
    next_id: AtomicU64,
    names: Mutex<HashMap<u64, &'static str>>,
    stack: Mutex<Vec<u64>>,
}

impl Capture {
    fn new() -> (Self, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let capture = Capture {
            seen: Arc::clone(&seen),
            next_id: AtomicU64::new(1),
            names: Mutex::new(HashMap::new()),
            stack: Mutex::new(Vec::new()),
        };
        (capture, seen)
    }
}

struct Fields(BTreeMap<&'static str, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name(), value.to_string());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name(), value.to_string());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name(), value.to_string());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = span.metadata().name();
        self.names.lock().unwrap().insert(id, name);
        self.seen.lock().unwrap().spans.push(name);
        tracing::span::Id::from_u64(id)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        let span = self
            .stack
            .lock()
            .unwrap()
            .last()
            .and_then(|id| self.names.lock().unwrap().get(id).copied());
        self.seen.lock().unwrap().events.push(SeenEvent {
            level: *event.metadata().level(),
            span,
            fields: fields.0,
        });
    }

    fn enter(&self, span: &tracing::span::Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }

    fn exit(&self, span: &tracing::span::Id) {
        let mut stack = self.stack.lock().unwrap();
        if let Some(i) = stack.iter().rposition(|id| *id == span.into_u64()) {
            stack.remove(i);
        }
    }
}

/// Installs `capture` as this thread's subscriber.
///
/// tracing caches per callsite whether any subscriber is interested. While at most one
/// dispatcher exists, a callsite first hit on *another* test's thread (no subscriber) caches
/// "never", and this test's subscriber would see nothing. Two dispatchers that stay alive for
/// the whole run and answer "sometimes" make every callsite ask the current subscriber each time.
fn install(capture: Capture) -> tracing::subscriber::DefaultGuard {
    struct Keeper;
    impl tracing::Subscriber for Keeper {
        fn register_callsite(
            &self,
            _: &'static tracing::Metadata<'static>,
        ) -> tracing::subscriber::Interest {
            tracing::subscriber::Interest::sometimes()
        }
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            false
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
    static KEEPERS: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
    KEEPERS.get_or_init(|| {
        [
            tracing::Dispatch::new(Keeper),
            tracing::Dispatch::new(Keeper),
        ]
    });
    let guard = tracing::subscriber::set_default(capture);
    tracing::callsite::rebuild_interest_cache();
    guard
}

fn retry_events(seen: &Seen) -> Vec<SeenEvent> {
    seen.events
        .iter()
        .filter(|e| e.fields.contains_key("delay_ms"))
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn tracing_span_and_one_event_per_retry() {
    let (capture, seen) = Capture::new();
    let _guard = install(capture);

    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::sqlstate("40P01"));
    assert_eq!(bump(&db, 1).await.unwrap(), 1);

    let seen = seen.lock().unwrap();
    assert!(seen.spans.contains(&"bump"), "spans: {:?}", seen.spans);
    let retries = retry_events(&seen);
    assert_eq!(retries.len(), 2, "{retries:#?}");
    let slept = sleeps(&db);
    // A simulated 40001 names no source file, so it is `other`; a 40P01 is a deadlock anywhere.
    let expected = [("40001", "other"), ("40P01", "deadlock")];
    for (i, (event, (code, kind))) in retries.iter().zip(expected).enumerate() {
        assert_eq!(event.span, Some("bump"), "{event:?}");
        assert_eq!(event.fields["attempt"], (i + 1).to_string(), "{event:?}");
        assert_eq!(event.fields["sqlstate"], code, "{event:?}");
        assert_eq!(event.fields["conflict"], kind, "{event:?}");
        let delay_ms: f64 = event.fields["delay_ms"].parse().unwrap();
        assert_eq!(delay_ms, slept[i].as_secs_f64() * 1e3, "{event:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn tracing_reports_giving_up() {
    let (capture, seen) = Capture::new();
    let _guard = install(capture);

    let db = failing(1..=3, Phase::Commit, "40001");
    bump3(&db).await.unwrap_err();

    let seen = seen.lock().unwrap();
    assert_eq!(retry_events(&seen).len(), 2);
    let gave_up: Vec<_> = seen
        .events
        .iter()
        .filter(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m.contains("giving up"))
        })
        .collect();
    assert_eq!(gave_up.len(), 1, "{:#?}", seen.events);
    assert_eq!(gave_up[0].level, tracing::Level::WARN);
    assert_eq!(gave_up[0].fields["attempts"], "3");
    assert_eq!(gave_up[0].fields["sqlstate"], "40001");
    assert_eq!(gave_up[0].span, Some("bump3"));
}
