from scope.server_ext.application import main

main()
