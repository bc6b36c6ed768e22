//! Test support shared by the operator's integration tests (`mod support;` in each test file).
//! Each test binary uses a part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod fake_api;
pub mod helm;
pub mod rbac;
pub mod schema;
