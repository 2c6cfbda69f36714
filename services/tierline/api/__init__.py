"""aiohttp adapter: routes, auth, problem details, OpenAPI."""
