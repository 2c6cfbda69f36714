"""asyncpg adapters: pool, migrations, the write side and read queries."""
