//! VirtualService `http` rules, compiled.
