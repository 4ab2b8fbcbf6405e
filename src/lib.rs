//! kmseal: Kubernetes Secrets in Git, envelope-encrypted with AWS KMS.
//!
//! The library holds everything; the binaries only wire it together.
#![forbid(unsafe_code)]

pub mod api;
pub mod arn;
pub mod binding;
pub mod category;
pub mod cli;
pub mod config;
pub mod controller;
pub mod edit;
pub mod envelope;
pub mod iam;
pub mod identity;
pub mod kms;
pub mod manifest;
pub mod metrics;
pub mod open;
pub mod pattern;
pub mod plugin_completion;
pub mod policy;
pub mod random;
pub mod reconcile;
pub mod repo_config;
pub mod rotation;
pub mod seal;
pub mod server;
pub mod sync;
pub mod telemetry;
pub mod text;
pub mod time;
pub mod validate;
pub mod webhook;
pub mod wrapping;
pub mod yaml;
