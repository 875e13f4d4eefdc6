//! On a hot standby.
