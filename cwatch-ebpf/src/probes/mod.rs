//! One file per attached program.
pub mod inet_sock_set_state;
pub mod tcp_destroy_sock;
