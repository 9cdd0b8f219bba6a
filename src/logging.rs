//! The log backend: env_logger on stderr, filtered by RUST_LOG (default
//! `info`), as text lines or one JSON object per line.

use std::io::Write;

use env_logger::{Builder, Env, Target};
use log::kv::{self, Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

use crate::cli::LogFormat;

/// Installs the logger. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let mut builder = Builder::from_env(Env::default().default_filter_or("info"));
    builder.target(Target::Stderr);
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let mut fields = Map::new();
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            fields.insert("ts".into(), now.into());
            fields.insert("level".into(), record.level().as_str().into());
            fields.insert("target".into(), record.target().into());
            fields.insert("msg".into(), record.args().to_string().into());
            // Collecting into a map cannot fail.
            let _ = record.key_values().visit(&mut JsonFields(&mut fields));
            writeln!(out, "{}", Json::Object(fields))
        });
    }
    builder.init();
}

/// Copies key/values into a JSON object, keeping numbers and booleans typed.
struct JsonFields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(x) = value.to_f64() {
            x.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}
