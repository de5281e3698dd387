//! `meshctl`: the operator's CLI.
#![forbid(unsafe_code)]
