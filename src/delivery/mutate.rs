//! The pure pod mutation: pod template + options → mutated pod template. No I/O.
