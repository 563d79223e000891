import VMDaemon

VMDMain.main()
