echo generated-by-bind-mounted-script
