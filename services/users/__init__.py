"""The users service: registration, login (RS256 JWTs and their JWKS), profiles, and the admin bootstrap."""
