//! ferry's feature store: feature definitions (`features.yaml`), the Redis online store and an
//! in-process one, offline Parquet reading, materialization, point-in-time export, and the
//! serving join that turns request rows into model inputs.

mod error;
pub mod feast;
pub mod join;
pub mod materialize;
pub mod offline;
pub mod online;
pub mod pit;
pub mod repo;
pub mod value;

pub use error::FeatureError;
pub use join::{JoinPlan, Joined, Source, model_join_plan};
pub use online::{OnMissing, OnlineFeatures, OnlineStore, Status};
pub use repo::{FeatureRef, FeatureRepo, parse_duration};
pub use value::{FeatureType, FeatureValue};
