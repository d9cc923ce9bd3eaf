//! SSH sessions to devices (russh): host keys checked against known_hosts,
//! one connection per host reused for every step.
