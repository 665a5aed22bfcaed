"""borealdb server side: storage nodes, the volume client, instances, routers and the local launcher."""
