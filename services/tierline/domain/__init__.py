"""Pure core: events, commands, decide/evolve, governance and business time. No I/O here."""
