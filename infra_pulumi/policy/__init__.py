"""CrossGuard policy pack; the rules live in :mod:`rules` so they can be tested without the engine."""
