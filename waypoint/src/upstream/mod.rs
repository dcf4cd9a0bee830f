//! DestinationRule policies and upstream clusters.
