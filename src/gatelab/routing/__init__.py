"""gatelab.routing: routers that map token states x_TD to a RoutingDecision (issue 4)."""
