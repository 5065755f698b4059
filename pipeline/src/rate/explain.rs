//! TODO explain
