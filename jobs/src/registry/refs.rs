//! Typed references to registered assets: `name:version`.

use std::fmt;
use std::str::FromStr;

use crate::error::JobsError;

macro_rules! asset_ref {
    ($(#[$doc:meta])* $name:ident, $what:literal, $example:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            pub name: String,
            pub version: String,
        }

        impl $name {
            pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
                $name {
                    name: name.into(),
                    version: version.into(),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}:{}", self.name, self.version)
            }
        }

        impl FromStr for $name {
            type Err = JobsError;

            /// Parses `name:version`; the managed feature store's `azureml:` prefix is dropped.
            fn from_str(text: &str) -> Result<Self, JobsError> {
                let t = text.trim();
                let t = t.strip_prefix("azureml:").unwrap_or(t);
                match t.split_once(':') {
                    Some((n, v)) if !n.is_empty() && !v.is_empty() && !v.contains(':') => {
                        Ok($name::new(n, v))
                    }
                    _ => Err(JobsError::InvalidInput(format!(
                        "'{text}' is not {} reference; expected name:version, e.g. {}",
                        $what, $example
                    ))),
                }
            }
        }
    };
}

asset_ref!(
    /// A registered entity.
    EntityRef,
    "an entity",
    "account:1"
);
asset_ref!(
    /// A registered feature set version.
    FeatureSetRef,
    "a feature set",
    "transactions:1"
);
asset_ref!(
    /// A registered model version.
    ModelRef,
    "a model",
    "fraud_model:1"
);
