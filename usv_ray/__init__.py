"""usv_ray: breast ultrasound video AI at archive scale on Ray."""
