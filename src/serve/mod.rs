//! Serving: the one HTTP serving helper every server of the controller uses ([`httpd`]).
pub mod httpd;
