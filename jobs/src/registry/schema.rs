//! The registry's tables, as numbered migrations applied in order and recorded in
//! `schema_migrations`. A migration, once released, never changes: add a new one.
//!
//! The SQL is kept to what SQLite and server databases share (TEXT, INTEGER, composite keys),
//! so another backend can run the same migrations.

/// `(version, statements)`.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE entities (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        spec_yaml TEXT NOT NULL,
        description TEXT,
        stage TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE feature_sets (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        asset_yaml TEXT NOT NULL,
        spec_yaml TEXT NOT NULL,
        description TEXT,
        stage TEXT NOT NULL,
        offline_enabled INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE feature_set_entities (
        feature_set TEXT NOT NULL,
        feature_set_version TEXT NOT NULL,
        entity TEXT NOT NULL,
        entity_version TEXT NOT NULL,
        PRIMARY KEY (feature_set, feature_set_version, entity, entity_version)
    );
    CREATE TABLE features (
        feature_set TEXT NOT NULL,
        feature_set_version TEXT NOT NULL,
        position INTEGER NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        description TEXT,
        PRIMARY KEY (feature_set, feature_set_version, name)
    );
    CREATE TABLE tags (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        tag TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (kind, name, version, tag)
    );",
    ),
    (
        2,
        "CREATE TABLE data_intervals (
        feature_set TEXT NOT NULL,
        feature_set_version TEXT NOT NULL,
        start_us INTEGER NOT NULL,
        end_us INTEGER NOT NULL,
        status TEXT NOT NULL,
        PRIMARY KEY (feature_set, feature_set_version, start_us)
    );
    CREATE TABLE jobs (
        id TEXT NOT NULL PRIMARY KEY,
        kind TEXT NOT NULL,
        feature_set TEXT NOT NULL,
        feature_set_version TEXT NOT NULL,
        start_us INTEGER NOT NULL,
        end_us INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE tasks (
        job_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        start_us INTEGER NOT NULL,
        end_us INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        rows_written INTEGER,
        table_version INTEGER,
        error TEXT,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (job_id, idx)
    );",
    ),
    (
        3,
        "CREATE TABLE settings (
        key TEXT NOT NULL PRIMARY KEY,
        value TEXT NOT NULL
    );",
    ),
    (
        4,
        "CREATE TABLE models (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        retrieval_spec_yaml TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE model_feature_sets (
        model TEXT NOT NULL,
        model_version TEXT NOT NULL,
        feature_set TEXT NOT NULL,
        feature_set_version TEXT NOT NULL,
        PRIMARY KEY (model, model_version, feature_set, feature_set_version)
    );",
    ),
    (
        5,
        // Jobs owned by a long-running scheduler: the request they were submitted with (to
        // resume them after a restart), cancellation, timing, and every task attempt.
        "ALTER TABLE jobs ADD COLUMN request TEXT;
    ALTER TABLE jobs ADD COLUMN error TEXT;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN started_at TEXT;
    ALTER TABLE jobs ADD COLUMN finished_at TEXT;
    CREATE TABLE task_attempts (
        job_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        PRIMARY KEY (job_id, idx, attempt)
    );",
    ),
    (
        6,
        // Materialization schedules and the triggers they fired (see registry/schedules.rs).
        "CREATE TABLE schedules (
        feature_set TEXT NOT NULL,
        feature_set_version TEXT NOT NULL,
        definition TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        cursor_us INTEGER,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (feature_set, feature_set_version)
    );
    CREATE TABLE schedule_triggers (
        feature_set TEXT NOT NULL,
        feature_set_version TEXT NOT NULL,
        trigger_us INTEGER NOT NULL,
        state TEXT NOT NULL,
        job_id TEXT,
        start_us INTEGER NOT NULL,
        end_us INTEGER NOT NULL,
        skipped INTEGER NOT NULL,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (feature_set, feature_set_version, trigger_us)
    );",
    ),
];
