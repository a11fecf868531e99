#![no_std]
// This file exists to enable the library target, so that cwatch-daemon can
// name this crate as a build-dependency and cargo rebuilds the object when it
// (or cwatch-common) changes. The programs are in main.rs.
