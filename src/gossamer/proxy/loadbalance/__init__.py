"""Load balancers: round robin, least request (P2C), peak EWMA, ring hash."""
