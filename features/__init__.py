"""Kairos features: input contract, adapters, point-in-time features and labels, Aha moments, lifecycle."""
