//! Warren's ztunnel: the node-local L4 proxy (see README.md).
